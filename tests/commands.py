"""How tests run the installed `bulkresize` command."""

from __future__ import annotations

import sys
from pathlib import Path


def bulkresize_command() -> list[str]:
    """The installed console script, beside the interpreter running the tests."""
    script = Path(sys.executable).parent / "bulkresize"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bulkresize"]
