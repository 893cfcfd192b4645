"""The Python package: `pip install .` gives the `pilotlog` command and the importable package.

The wheel and the sdist are built with the standard `build` frontend; the wheel is installed
into a fresh venv on the oldest and the newest installed CPython and the CLI smoke runs there.
The version is the one the bundle carries (one place: pilotlogger/__init__.py).
"""

import json
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

from helpers import ROOT, clean_env, unavailable
from test_matrix import interpreters, python_version


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def _version() -> str:
    from pilotlogger import __version__

    return __version__


def test_wheel_and_sdist_carry_the_package_and_no_dependency(built):
    wheel, sdist = built
    assert wheel.name == "pilotlogger-%s-py3-none-any.whl" % _version()
    with zipfile.ZipFile(str(wheel)) as z:
        names = set(z.namelist())
        metadata = z.read("pilotlogger-%s.dist-info/METADATA" % _version()).decode()
        entry_points = z.read("pilotlogger-%s.dist-info/entry_points.txt" % _version()).decode()
    sources = {"pilotlogger/" + n for n in os.listdir(str(ROOT / "pilotlogger")) if n.endswith(".py")}
    assert sources <= names  # every module the bundle carries
    assert "Requires-Dist" not in metadata and "Requires-Python: >=3.6" in metadata
    assert "pilotlog = pilotlogger.cli:main" in entry_points
    with tarfile.open(str(sdist)) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md"} | sources <= members


def _extremes():
    """The oldest and the newest installed CPython (3.6+)."""
    found = sorted(((python_version(exe), exe) for _, exe in interpreters()), key=lambda v: v[0])
    found = [(v, exe) for v, exe in found if v and v >= (3, 6)]
    if not found:
        unavailable("no CPython 3.6+ found to install the wheel into")
    return [found[0][1], found[-1][1]] if len(found) > 1 else [found[0][1]]


@pytest.mark.parametrize("which", [0, -1], ids=["oldest-python", "newest-python"])
def test_wheel_installs_and_runs_in_a_fresh_venv(built, tmp_path, which):
    python = _extremes()[which]
    wheel, _ = built
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--no-deps", str(wheel)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        timeout=120,
    )
    assert pip.returncode == 0, pip.stdout
    env = clean_env(PILOTLOG_SPOOL=tmp_path / "spool", DIRAC_PILOT_STAMP="b" * 32)

    def pilotlog(*args):
        p = subprocess.run(
            [str(venv / "bin" / "pilotlog")] + list(args),
            cwd=str(tmp_path),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=60,
        )
        assert p.returncode == 0, (args, p.stderr)
        return p

    assert pilotlog("--version").stdout.strip() == "pilotlog %s" % _version()
    pilotlog("emit", "boot", "-m", "from the wheel")
    api = "import pilotlogger; assert pilotlogger.emit('power', 'power of 11 HS06', hs06=11)"
    subprocess.run([str(venv / "bin" / "python"), "-c", api], cwd=str(tmp_path), env=env, check=True, timeout=60)
    shipped = [json.loads(line) for line in pilotlog("replay").stdout.splitlines()]
    assert [(e["phase"], e["pilot"]) for e in shipped] == [("boot", "b" * 32), ("power", "b" * 32)]
    assert shipped[1]["data"] == {"hs06": 11}
