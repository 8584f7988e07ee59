from __future__ import annotations

import pytest

from bulkresize.testing import ValidatorContract
from bulkresize.validation import Validator
from bulkresize.validation.pandera import PanderaValidator


class TestPanderaValidator(ValidatorContract):
    @pytest.fixture
    def validator(self) -> Validator:
        return PanderaValidator()
