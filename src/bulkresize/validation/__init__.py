"""CSV validators. The port is :class:`Validator`; the default is the pandera schema."""

from bulkresize.validation.base import Validator

__all__ = ["Validator"]
