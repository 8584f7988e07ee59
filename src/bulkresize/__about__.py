"""The version of bulkresize, read by the build."""

__version__ = "0.1.0"
