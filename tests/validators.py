"""Validators for tests that run them by dotted path, in a child process."""

from __future__ import annotations

import os

from bulkresize.models import Catalogue
from bulkresize.validation.base import Validator


class DyingValidator(Validator):
    """Ends its process at once, as a crash in a native parser would."""

    def __init__(self, **limits: object) -> None:
        self.limits = limits

    def validate(self, data: bytes, *, allow_local_files: bool = False) -> Catalogue:
        os._exit(70)
