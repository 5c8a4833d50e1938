"""The ``xpmet`` command line: argument parsing only; every command calls a library function.

Commands are imported when they run, not when ``xpmet`` starts: ``xpmet --help`` lists them from
the one-line summaries below without importing torch, numpy or the database driver.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

from xpmet import __version__
from xpmet.errors import XpmetError


class LazyGroup(click.Group):
    """A group whose subcommands live in other modules, given as name -> ("module:attr", summary)."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name in self.lazy and name not in self.commands:
            module, attr = self.lazy[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:  # the listing's one source: no import to show it
                rows.append((name, self.lazy[name][1]))
            else:
                cmd = self.get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(formatter.width)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _lost_connection(e: BaseException) -> bool:
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(e, psycopg.OperationalError)


def _database_error(e: BaseException) -> bool:
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(e, psycopg.Error)


class XpmetGroup(LazyGroup):
    """Ends every command with a one-line message and a non-zero status, never a traceback
    (XPMET_DEBUG=1 shows the traceback of an unexpected error)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except XpmetError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was committed", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001  the last line of defence of a command-line tool
            if os.environ.get("XPMET_DEBUG"):
                raise
            if _lost_connection(e):
                _fail(f"lost the database connection: {str(e).strip()}\n"
                      "Check `xpmet db status`; a re-run continues where committed work stopped.")
            first = (str(e).strip().splitlines() or [""])[0]
            if _database_error(e):
                _fail(f"database error ({type(e).__name__}): {first}")
            _fail(f"unexpected {type(e).__name__}: {first}\n"
                  "This is a bug in xpmet: run again with XPMET_DEBUG=1 for the traceback and report it.")


def _fail(message: str):
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


#: name -> ("module:attribute", one-line summary shown by `xpmet --help`)
COMMANDS = {
    "clean": ("xpmet.cli.clean:clean_cmd", "Drop training stars whose XP photometry contradicts their labels."),
    "db": ("xpmet.cli.db:db", "The database: start, stop, status, url, migrate."),
    "demo": ("xpmet.cli.demo:demo", "The whole system end to end on a SIMULATED sky, in its own database."),
    "etl": ("xpmet.cli.etl:etl", "Load Gaia sources, XP spectra and survey catalogues."),
    "evaluate": ("xpmet.cli.ml:evaluate_cmd", "Metrics and plots of a model on the test split (and the truth)."),
    "export": ("xpmet.cli.ml:export_cmd", "The training_set view to a chunked, compressed HDF5 file."),
    "export-hats": ("xpmet.cli.hats:export_hats_cmd", "The predicted metallicities as a HATS catalogue for LSDB."),
    "labels": ("xpmet.cli.xmatch:labels", "Choose the label scale; recompute zero points and labels."),
    "predict": ("xpmet.cli.predict:predict", "Predict labels for every XP star into xpmet.predictions."),
    "query": ("xpmet.cli.query:query", "Stars with metallicities by sky region: cone, box, polygon."),
    "simulate": ("xpmet.cli.simulate:simulate", "Write a SIMULATED Gaia sky with XP spectra, surveys and truth."),
    "train": ("xpmet.cli.ml:train_cmd", "Train a model on an `xpmet export` file."),
    "xmatch": ("xpmet.cli.xmatch:xmatch", "Crossmatch every survey row to Gaia (a new current version), then labels."),
}


@click.group(cls=XpmetGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xpmet")
def main():
    """xpmet: stellar metallicities from Gaia DR3 XP spectra, in PostgreSQL with q3c.

    Without XPMET_DATABASE_URL, xpmet runs its own PostgreSQL cluster under XPMET_HOME
    and starts it when a command needs it.
    """
