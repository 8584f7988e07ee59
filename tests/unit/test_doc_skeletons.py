"""The copy-paste skeletons of docs/plugins/*.md are complete backends that pass their suites.

A skeleton is marked in the Markdown by an HTML comment just before each of its fenced blocks:

    <!-- skeleton: NAME -->        the plug-in's module (Python)
    <!-- pyproject: NAME -->       its pyproject.toml, with one entry point: group, scheme, target
    <!-- contract-test: NAME -->   its tests/test_contract.py
    <!-- example-test: NAME -->    any further test that imports the module (zero or more)

The module's name and class come from the entry point's target (``module:Class``), and the port
from its group (``bulkresize.<port>``). Each skeleton is exec'd into a fresh module to check its
class, and its contract test is run by pytest in a separate folder and process, laid out as a
plug-in's author would lay it out: the module and the test side by side.
"""

from __future__ import annotations

import inspect
import re
import sys
import tomllib
import types
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bulkresize.engines import ImageEngine
from bulkresize.models import ImageStatus, RequestStatus
from bulkresize.queues import Queue
from bulkresize.repositories import Repository
from bulkresize.service import Pipeline
from bulkresize.settings import Settings
from bulkresize.storage import Storage
from bulkresize.validation import Validator

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "docs" / "plugins"
EXAMPLES = REPO / "examples"

PORTS: dict[str, type] = {
    "storage": Storage,
    "queue": Queue,
    "repository": Repository,
    "validator": Validator,
    "engine": ImageEngine,
}

#: Every port has a page, and every page a skeleton named after its port.
PAGE_OF_PORT = {
    "storage": "storage.md",
    "queue": "queue.md",
    "repository": "repository.md",
    "validator": "validator.md",
    "engine": "engine.md",
}

MARKED_BLOCK = re.compile(
    r"<!-- (?P<kind>skeleton|pyproject|contract-test|example-test): (?P<name>[\w-]+) -->\n"
    r"```(?P<lang>\w+)\n(?P<code>.*?)\n```",
    re.DOTALL,
)
TEST_COUNT = re.compile(r"\((\d+) tests\)")
#: A body left as ``...``, where behaviour belongs.
PLACEHOLDER = re.compile(r"^\s*\.\.\.\s*$|:\s*\.\.\.\s*$", re.MULTILINE)


@dataclass
class Skeleton:
    """The marked blocks of one skeleton, and what its entry point says."""

    name: str
    page: str
    code: str = ""
    pyproject: str = ""
    contract_test: str = ""
    example_tests: list[str] = field(default_factory=list)
    #: The number of tests that the page says the contract test runs, when it says one.
    claimed_tests: int | None = None

    @property
    def entry_point(self) -> tuple[str, str, str]:
        """(port, scheme, ``module:Class``) of the single entry point in the pyproject."""
        groups = tomllib.loads(self.pyproject)["project"]["entry-points"]
        assert len(groups) == 1, f"{self.name}: one entry-point group expected"
        ((group, points),) = groups.items()
        assert len(points) == 1, f"{self.name}: one entry point expected"
        ((scheme, target),) = points.items()
        port = group.removeprefix("bulkresize.")
        assert port in PORTS, f"{self.name}: unknown entry-point group {group!r}"
        return port, scheme, target

    @property
    def module_name(self) -> str:
        return self.entry_point[2].partition(":")[0]

    @property
    def class_name(self) -> str:
        return self.entry_point[2].partition(":")[2]


def collect_skeletons() -> dict[str, Skeleton]:
    skeletons: dict[str, Skeleton] = {}
    kinds: dict[str, set[str]] = defaultdict(set)
    for page in sorted(PAGES.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in MARKED_BLOCK.finditer(text):
            kind, name, code = match["kind"], match["name"], match["code"] + "\n"
            skeleton = skeletons.setdefault(name, Skeleton(name, page.name))
            assert kind == "example-test" or kind not in kinds[name], f"two {kind} for {name}"
            kinds[name].add(kind)
            if kind == "skeleton":
                skeleton.code = code
            elif kind == "pyproject":
                skeleton.pyproject = code
            elif kind == "contract-test":
                skeleton.contract_test = code
                claimed = TEST_COUNT.findall(text[max(0, match.start() - 400) : match.start()])
                skeleton.claimed_tests = int(claimed[-1]) if claimed else None
            else:
                skeleton.example_tests.append(code)
    return skeletons


SKELETONS = collect_skeletons()


def load(skeleton: Skeleton, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Exec the skeleton into a fresh module, registered under its name for this test only."""
    module = types.ModuleType(skeleton.module_name)
    module.__file__ = f"<docs/plugins/{skeleton.page}: {skeleton.name}>"
    monkeypatch.setitem(sys.modules, skeleton.module_name, module)
    exec(compile(skeleton.code, module.__file__, "exec"), module.__dict__)
    cls = getattr(module, skeleton.class_name)
    assert isinstance(cls, type)
    return cls


def build(port: str, cls: Any, scheme: str, settings: Settings) -> Any:
    """Build the backend from a URL as the pipeline would, with the options it passes."""
    if port == "validator":
        return cls.from_url(
            scheme,
            max_rows=settings.max_rows,
            max_urls_per_row=settings.max_urls_per_row,
            max_upload_bytes=settings.max_upload_bytes,
        )
    if port == "engine":
        return cls.from_url(scheme, max_image_pixels=settings.max_image_pixels)
    return cls.from_url(f"{scheme}://")


def test_every_port_page_has_a_complete_skeleton() -> None:
    for port, page in PAGE_OF_PORT.items():
        skeleton = SKELETONS.get(port)
        assert skeleton is not None, f"docs/plugins/{page} marks no skeleton named {port!r}"
        assert skeleton.page == page
        assert skeleton.entry_point[0] == port
    for skeleton in SKELETONS.values():
        assert skeleton.code, f"{skeleton.name}: no <!-- skeleton --> block"
        assert skeleton.pyproject, f"{skeleton.name}: no <!-- pyproject --> block"
        assert skeleton.contract_test, f"{skeleton.name}: no <!-- contract-test --> block"
        assert not PLACEHOLDER.search(skeleton.code), f"{skeleton.name}: a `...` placeholder"
        assert f"from {skeleton.module_name} import" in skeleton.contract_test


@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_the_skeleton_is_a_concrete_backend_of_its_port(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    skeleton = SKELETONS[name]
    port, scheme, _ = skeleton.entry_point
    cls = load(skeleton, monkeypatch)
    assert issubclass(cls, PORTS[port])
    assert not inspect.isabstract(cls), f"{cls.__name__} leaves abstract methods"
    if name == "storage-folder":  # its from_url needs an absolute path
        backend = cls.from_url("folder:///srv/images")
    else:
        backend = build(port, cls, scheme, Settings())
    assert isinstance(backend, cls)
    backend.close()


def test_the_five_skeletons_run_the_whole_pipeline_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path)
    backends = {}
    for port in PORTS:
        skeleton = SKELETONS[port]
        backends[port] = build(port, load(skeleton, monkeypatch), skeleton.entry_point[1], settings)
    with Pipeline(settings, **backends) as pipeline:
        pipeline.start()
        request = pipeline.submit(
            (EXAMPLES / "products.csv").read_bytes(), base_dir=EXAMPLES.resolve()
        )
        report = pipeline.wait(request.id, timeout=120)
        assert report.status is RequestStatus.COMPLETED
        assert report.processed_images == report.total_images == 6
        images = pipeline.images(request.id)
        assert [image.status for image in images] == [ImageStatus.DONE] * 6
        output = pipeline.output_csv(request.id).decode()
        for image in images:
            url = pipeline.output_url(image)
            assert url is not None
            assert url in output


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_the_skeleton_passes_its_contract_test(
    name: str, pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    skeleton = SKELETONS[name]
    port = skeleton.entry_point[0]
    pytester.makepyfile(
        **{skeleton.module_name: skeleton.code, "test_contract": skeleton.contract_test}
    )
    # An installed distribution with the same module name must not stand in for the docs' one.
    pytester.makepyfile(
        test_module_origin=f"""
        from pathlib import Path

        import {skeleton.module_name}


        def test_the_module_under_test_is_the_one_from_the_docs():
            assert Path({skeleton.module_name}.__file__).parent == Path(__file__).parent
        """
    )
    tests = ["test_module_origin.py", "test_contract.py"]
    for number, example in enumerate(skeleton.example_tests, start=1):
        pytester.makepyfile(**{f"test_example_{number}": example})
        tests.append(f"test_example_{number}.py")
    (pytester.path / "examples").symlink_to(EXAMPLES, target_is_directory=True)
    if port == "engine":
        # The engine's contract test reads its images from a `corpus` folder beside itself.
        corpus = request.getfixturevalue("corpus_dir")
        (pytester.path / "corpus").symlink_to(corpus, target_is_directory=True)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-W", "error", *tests)
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()
    assert outcomes.get("failed", 0) == 0
    assert outcomes.get("errors", 0) == 0
    assert outcomes.get("skipped", 0) == 0
    ran = outcomes.get("passed", 0)
    assert ran > 0
    if skeleton.claimed_tests is not None:
        assert ran == 1 + skeleton.claimed_tests + len(skeleton.example_tests), (
            f"docs/plugins/{skeleton.page} says {skeleton.claimed_tests} tests; {ran} ran"
        )
