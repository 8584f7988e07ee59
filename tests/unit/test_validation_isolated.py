"""IsolatedValidator: the configured validator, run in a child process."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulkresize.errors import BackendNotFound, UploadTooLarge, ValidationFailed
from bulkresize.models import ValidationProblem
from bulkresize.testing import ValidatorContract
from bulkresize.validation.isolated import IsolatedValidator
from bulkresize.validation.pandera import PanderaValidator

GOOD = b'S. No.,Product Name,Input Image Urls\n1,Shoe,"https://a.example/1.jpg, https://a.example/2.jpg"\n'
BAD = b"S. No.,Product Name,Input Image Urls\n1,,https://a.example/1.jpg\n1,B,ftp://a/2.jpg\n"


class TestIsolatedValidatorKeepingItsChild(ValidatorContract):
    """The whole suite, through one kept child (a fresh child per call takes 0.7 s)."""

    @pytest.fixture
    def validator(self) -> Iterator[IsolatedValidator]:
        isolated = IsolatedValidator("pandera", keep_child=True)
        yield isolated
        isolated.close()


def test_a_fresh_child_gives_what_the_validator_gives_in_process() -> None:
    isolated = IsolatedValidator("pandera")
    assert isolated.validate(GOOD) == PanderaValidator().validate(GOOD)


def test_every_problem_crosses_the_process_boundary_intact() -> None:
    with pytest.raises(ValidationFailed) as in_process:
        PanderaValidator().validate(BAD)
    with pytest.raises(ValidationFailed) as isolated:
        IsolatedValidator("pandera").validate(BAD)
    assert isolated.value.problems == in_process.value.problems
    assert str(isolated.value) == str(in_process.value)
    assert len(isolated.value.problems) == 3


def test_the_limits_reach_the_child() -> None:
    with pytest.raises(UploadTooLarge):
        IsolatedValidator("pandera", {"max_upload_bytes": 10}).validate(GOOD)


def test_an_unknown_validator_is_a_configuration_error() -> None:
    with pytest.raises(BackendNotFound, match="no validator backend"):
        IsolatedValidator("no-such-validator").validate(GOOD)


@pytest.mark.parametrize("keep_child", [False, True])
def test_a_child_that_dies_fails_validation_with_a_message(keep_child: bool) -> None:
    isolated = IsolatedValidator("crashers:DyingValidator", keep_child=keep_child)
    try:
        with pytest.raises(ValidationFailed) as caught:
            isolated.validate(GOOD)
        [problem] = caught.value.problems
        assert problem.row is None
        assert "the validating process failed" in problem.message
        if keep_child:  # a new child takes the next file
            isolated.target = "pandera"
            assert len(isolated.validate(GOOD).rows) == 1
    finally:
        isolated.close()


def test_this_process_does_not_load_the_validator() -> None:
    """The point of it: pandas and pyarrow stay out of the caller (checked in a fresh one)."""
    import subprocess

    code = (
        "import sys\n"
        "from bulkresize.validation.isolated import IsolatedValidator\n"
        f"IsolatedValidator('pandera').validate({GOOD!r})\n"
        "print(sorted({'pandas', 'pyarrow', 'pandera'} & set(sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


def test_what_the_child_prints_does_not_corrupt_its_answer() -> None:
    catalogue = IsolatedValidator("crashers:ChattyValidator").validate(GOOD)
    assert catalogue == PanderaValidator().validate(GOOD)


def test_an_error_that_does_not_pickle_still_says_what_it_was() -> None:
    with pytest.raises(ValidationFailed) as caught:
        IsolatedValidator("crashers:UnpicklableErrorValidator").validate(GOOD)
    [problem] = caught.value.problems
    assert problem.message == (
        "the file could not be validated (_ErrorHoldingALock: an error that holds a lock)"
    )


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    """The child is not multiprocessing's spawn, which would run the caller's script again."""
    import subprocess

    runs = tmp_path / "runs.txt"
    script = tmp_path / "script.py"
    script.write_text(
        "from bulkresize.validation.isolated import IsolatedValidator\n"
        f"with open({str(runs)!r}, 'a') as f:\n"
        "    f.write('ran\\n')\n"
        f"print(len(IsolatedValidator('pandera').validate({GOOD!r}).rows))\n"
    )
    output = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert output.strip() == "1"
    assert runs.read_text() == "ran\n"


def test_ctrl_c_while_validating_stops_the_child_at_once(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    pidfile = tmp_path / "child.pid"
    code = (
        "from bulkresize.validation.isolated import IsolatedValidator\n"
        "try:\n"
        "    IsolatedValidator('crashers:SlowValidator').validate(b'')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    tests = str(Path(__file__).parents[1])  # where crashers.py is
    env = {**os.environ, "BULKRESIZE_TEST_PIDFILE": str(pidfile), "PYTHONPATH": tests}
    caller = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline, "the validator never started"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        caller.send_signal(signal.SIGINT)
        # At once: not after the 60 s of the file, nor after a grace period for the child to end.
        output, _ = caller.communicate(timeout=5)
    finally:
        caller.kill()
        caller.communicate()
    assert output.strip() == "interrupted"
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # killed and reaped, not left validating


def test_validation_failed_pickles_with_its_problems() -> None:
    problems = [
        ValidationProblem(2, "S. No.", "x", "a problem"),
        ValidationProblem(None, None, None, "b"),
    ]
    copy = pickle.loads(pickle.dumps(ValidationFailed(problems)))
    assert copy.problems == problems
    assert str(copy) == str(ValidationFailed(problems))
