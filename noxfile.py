"""Sessions: tests (against the installed package), lint, typing and docs."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typing", "docs"]
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False


_LINTED = ("src", "tests", "noxfile.py", "examples", "plugins", "benchmarks")


def _plugins() -> list[str]:
    """The first-party plug-in distributions under plugins/, as pip paths."""
    return sorted(f"./{path.parent}" for path in Path("plugins").glob("*/pyproject.toml"))


def _install(session: nox.Session, *args: str) -> None:
    # Dependency groups need pip >= 25.1; the venv's bundled pip may be older.
    session.install("--upgrade", "pip")
    session.install(*args)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite against the installed package (not the source tree)."""
    _install(session, "--group", "test", ".[all]")
    # The first-party plug-ins (plugins/*) and the example third-party one, from the working
    # tree: their own tests, and the e2e tests that load them.
    plugins = _plugins()
    session.install(*plugins, "./examples/storage_plugin")
    test_dirs = [f"{path}/tests" for path in plugins]
    session.run(
        "pytest", *(session.posargs or ["tests", "examples/storage_plugin/tests", *test_dirs])
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint and format check."""
    _install(session, "--group", "lint")
    session.run("ruff", "check", *_LINTED)
    session.run("ruff", "format", "--check", *_LINTED)


@nox.session
def typing(session: nox.Session) -> None:
    """Mypy, strict, on src/."""
    _install(session, "--group", "typing", ".[all]")
    session.run("mypy", "src")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs strictly: a broken link or a page missing from the nav fails."""
    _install(session, "--group", "docs")
    session.run("mkdocs", "build", "--strict", "--site-dir", str(session.create_tmp() + "/site"))


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark harness (not run by default): ``nox -s bench -- 6mp --quick``."""
    _install(session, "--group", "bench", ".[all]", *_plugins())
    session.run("python", "-m", "benchmarks", *session.posargs)
