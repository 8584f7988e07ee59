"""Storage backends. The port is :class:`Storage`; ``fsspec`` covers file://, memory://, s3://."""

from bulkresize.storage.base import Storage

__all__ = ["Storage"]
