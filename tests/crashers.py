"""Backends for tests that run them by dotted path in a child process that they crash, stall
or make misbehave."""

from __future__ import annotations

import os
import threading
import time

from bulkresize.engines.pillow import PillowEngine
from bulkresize.models import Catalogue, EncodedImage, ImageOptions
from bulkresize.validation.base import Validator
from bulkresize.validation.pandera import PanderaValidator

#: An image whose bytes hold this makes DyingEngine end its process.
CRASH = b"crash this process"


class DyingValidator(Validator):
    """Ends its process at once, as a crash in a native parser would."""

    def __init__(self, **limits: object) -> None:
        self.limits = limits

    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        os._exit(70)


class ChattyValidator(PanderaValidator):
    """pandera, after printing to standard output, as a noisy library might."""

    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        print("a library talking on standard output")
        os.write(1, b"and below Python's buffers too\n")
        return super().validate(data, allow_local_files=allow_local_files)


class SlowValidator(Validator):
    """Writes its PID to the file named in ``BULKRESIZE_TEST_PIDFILE``, then takes a minute."""

    def __init__(self, **limits: object) -> None:
        self.limits = limits

    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        with open(os.environ["BULKRESIZE_TEST_PIDFILE"], "w") as file:
            file.write(str(os.getpid()))
        time.sleep(60)
        raise AssertionError("not interrupted")


class _ErrorHoldingALock(Exception):
    def __init__(self) -> None:
        super().__init__("an error that holds a lock")
        self.lock = threading.Lock()  # locks do not pickle


class UnpicklableErrorValidator(Validator):
    """Raises an error that cannot be pickled back to the parent."""

    def __init__(self, **limits: object) -> None:
        self.limits = limits

    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        raise _ErrorHoldingALock


class EngineThatFailsInChildren(PillowEngine):
    """Builds in the process whose PID is in ``BULKRESIZE_TEST_PARENT``, and fails elsewhere."""

    def __init__(self, **options: object) -> None:
        if os.environ.get("BULKRESIZE_TEST_PARENT") != str(os.getpid()):
            raise RuntimeError("this engine cannot start here")
        super().__init__(**options)  # type: ignore[arg-type]


class DyingEngine(PillowEngine):
    """Pillow, except that an image holding ``CRASH`` ends the process, as a decoder's
    segmentation fault would."""

    def process(self, data: bytes, options: ImageOptions) -> EncodedImage:
        if CRASH in data:
            os._exit(70)
        return super().process(data, options)
