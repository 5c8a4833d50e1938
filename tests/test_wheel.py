"""The package as users install it: a wheel built from the repository, installed into a throw-away
virtual environment outside the checkout, run from another folder (no checkout on any path).

Slow (about two minutes: the environment installs every dependency, from pip's cache when warm);
deselect with ``-m "not wheel"`` while iterating.
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.wheel


def _run(cmd, cwd, env, timeout=900):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder, environment) of a fresh venv holding only the wheel and its declared dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XPMET_", "PYTHON", "VIRTUAL_ENV"))}
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", ROOT], tmp, env)
    wheel = next((tmp / "dist").glob("xpmet-*.whl"))
    venv.create(tmp / "venv", with_pip=True)
    bin_ = tmp / "venv" / "bin"
    # The same versions as the test environment (so nothing new is downloaded and torch stays the
    # CPU build), but resolved from the wheel's own metadata: a missing dependency fails here.
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], tmp, env)
    (tmp / "constraints.txt").write_text("\n".join(l for l in frozen.splitlines()
                                                   if l and not l.startswith(("xpmet", "-e"))) + "\n")
    _run([bin_ / "pip", "install", "-q", "-c", tmp / "constraints.txt", wheel], tmp, env)
    work = tmp / "elsewhere"
    work.mkdir()
    env["XPMET_HOME"] = str(tmp / "home")
    yield bin_, env, work
    subprocess.run([bin_ / "xpmet", "db", "stop"], cwd=work, env=env, capture_output=True)


def test_imports_from_the_installed_package_not_the_checkout(installed):
    bin_, env, work = installed
    where = _run([bin_ / "python", "-c", "import xpmet, xpmet.resources as r; "
                  "print(xpmet.__file__); print(r.migrations_dir()); print(xpmet.__version__)"], work, env)
    assert str(ROOT) not in where and "site-packages" in where
    assert _run([bin_ / "xpmet", "--version"], work, env).strip().endswith(where.split()[-1])


def test_lists_the_shipped_descriptors(installed):
    bin_, env, work = installed
    out = _run([bin_ / "xpmet", "etl", "survey", "--list"], work, env)
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"apogee", "galah", "lamost", "gbs", "gaia_eso", "rave", "segue", "gspspec", "pristine"} <= names


def test_migrates_a_fresh_database(installed):
    bin_, env, work = installed
    out = _run([bin_ / "xpmet", "db", "migrate"], work, env)
    from xpmet.db.migrate import head
    assert out.strip() == f"schema at revision {head()}"


def test_runs_a_small_demo(installed):
    bin_, env, work = installed
    _run([bin_ / "xpmet", "demo", "--out", work / "demo", "--n-stars", 1000, "--epochs", 3], work, env)
    report = (work / "demo" / "report.txt").read_text()
    assert "predictions" in report and (work / "demo" / "cone.ecsv").exists()
