"""Image engines. The port is :class:`ImageEngine`; the default is Pillow."""

from bulkresize.engines.base import ImageEngine

__all__ = ["ImageEngine"]
