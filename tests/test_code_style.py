"""The code as the Python world checks it (issue 18): ruff's linter and formatter, and mypy.

Their settings, and why each is what it is, are in pyproject.toml: ruff's pycodestyle,
pyflakes, import-order and bugbear rules over everything Python here; its formatter at
120 columns; mypy at its default level over pilotlogger/.  Each must be clean.
"""

import importlib.util
import subprocess
import sys

import pytest

from helpers import ROOT, unavailable

PYTHON_FILES = ["."]  # every Python file of the checkout, as `ruff check` and `ruff format` run bare do


def tool(module: str, *args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(module) is None:
        unavailable("%s is not installed (make venv installs tests/requirements.txt)" % module)
    return subprocess.run(
        [sys.executable, "-m", module] + list(args),
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "what,args",
    [
        ("lint", ["check", "--no-cache", "--output-format", "concise"] + PYTHON_FILES),
        ("format", ["format", "--no-cache", "--check", "--diff"] + PYTHON_FILES),
    ],
)
def test_ruff_is_clean(what, args):
    p = tool("ruff", *args)
    assert p.returncode == 0, "ruff %s (fix with: .venv/bin/ruff %s):\n%s" % (
        what,
        "check --fix" if what == "lint" else "format",
        p.stdout[-5000:],
    )


def test_mypy_is_clean_on_the_package():
    p = tool("mypy", "--no-incremental")  # what to check and how strictly: [tool.mypy] in pyproject.toml
    assert p.returncode == 0 and "Success" in p.stdout, p.stdout[-5000:]
