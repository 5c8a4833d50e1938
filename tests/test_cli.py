"""The command line as a user meets it: fast start-up, --help everywhere, one-line errors."""
from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from xpmet.cli import COMMANDS, main
from xpmet.cli.etl import COMMANDS as ETL_COMMANDS


def test_help_imports_no_heavy_module():
    """`xpmet --help` lists every command without importing torch, numpy, astropy or psycopg."""
    code = ("import sys; from xpmet.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', *sorted(m for m in ('torch', 'numpy', 'astropy', 'psycopg', 'sqlalchemy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("LOADED"), out
    for name in COMMANDS:
        assert f"  {name} " in out


@pytest.mark.parametrize("table", [COMMANDS, ETL_COMMANDS], ids=["xpmet", "etl"])
def test_every_listed_command_resolves(table):
    for name, (path, summary) in table.items():
        module, attr = path.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command), name
        assert summary and len(summary) < 80 and "\n" not in summary


def _all_commands(group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


def test_help_on_every_command():
    from click.testing import CliRunner
    names = list(_all_commands(main))
    assert ("etl", "xp") in names and ("query", "cone") in names
    for path in names:
        r = CliRunner().invoke(main, [*path, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, (path, r.output)
