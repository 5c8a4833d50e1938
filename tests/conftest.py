"""Test fixtures: one real embedded PostgreSQL+q3c cluster per test session, in a throw-away XPMET_HOME.

No mocks: every test that touches the database talks to this cluster. It is destroyed at the end.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def xpmet_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("xpmet-home")
    old = {k: os.environ.get(k) for k in ("XPMET_HOME", "XPMET_DATABASE_URL")}
    os.environ["XPMET_HOME"] = str(home)
    os.environ.pop("XPMET_DATABASE_URL", None)
    from xpmet.db.cluster import Cluster
    from xpmet.db import migrate
    cluster = Cluster(home)
    cluster.start()
    from xpmet.db.engine import libpq_url
    migrate.upgrade(libpq_url(), "head")
    yield home
    from xpmet.db.connection import engine_for
    engine_for.cache_clear()  # engines die with the cluster
    cluster.destroy()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def engine(xpmet_home):
    import xpmet
    return xpmet.connect()


def truncate_all(engine):
    """Empty every table of schema xpmet (keeps the schema and alembic_version)."""
    with engine.begin() as c:
        names = c.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'xpmet' AND tablename <> 'alembic_version'"
        )).scalars().all()
        if names:
            c.execute(sa.text("TRUNCATE " + ", ".join(f"xpmet.{n}" for n in names) + " RESTART IDENTITY CASCADE"))


@pytest.fixture
def clean_db(engine):
    """An empty schema for tests that load data."""
    truncate_all(engine)
    yield engine
    truncate_all(engine)


@pytest.fixture(scope="session")
def run_cli(xpmet_home):
    """Invoke the real CLI in-process; returns click's Result."""
    from click.testing import CliRunner
    from xpmet.cli import main

    def run(*args, ok=True):
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        if ok and r.exit_code != 0:
            raise AssertionError(f"xpmet {' '.join(map(str, args))} exited {r.exit_code}:\n{r.output}")
        return r
    return run


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is many times faster than two."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
