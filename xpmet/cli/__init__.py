"""The ``xpmet`` command line: argument parsing only; every command calls a library function."""
from __future__ import annotations

import sys

import click
import psycopg

from xpmet import __version__
from xpmet.errors import XpmetError


class XpmetGroup(click.Group):
    """Prints XpmetError as a one-line message (exit 1) instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XpmetError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)
        except psycopg.OperationalError as e:  # the server went away mid-command
            click.secho(f"error: lost the database connection: {str(e).strip()}\n"
                        "Check `xpmet db status`; a re-run continues where committed work stopped.", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was committed", err=True)
            sys.exit(130)


@click.group(cls=XpmetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xpmet")
def main():
    """xpmet: stellar metallicities from Gaia DR3 XP spectra, in PostgreSQL with q3c.

    Without XPMET_DATABASE_URL, xpmet runs its own PostgreSQL cluster under XPMET_HOME
    and starts it when a command needs it.
    """


def _register():
    # One module per command group; each owns its arguments and calls into the library.
    from xpmet.cli import db, etl
    main.add_command(db.db)
    main.add_command(etl.etl)
    from xpmet.cli import simulate  # issue 3: mock sky
    main.add_command(simulate.simulate)
    from xpmet.cli import etl_gaia  # issue 4: etl gaia-source, etl xp
    etl.etl.add_command(etl_gaia.gaia_source)
    etl.etl.add_command(etl_gaia.xp)
    from xpmet.cli import etl_survey, xmatch  # noqa: F401  issue 5: etl survey, xmatch, labels
    main.add_command(xmatch.xmatch)
    main.add_command(xmatch.labels)
    from xpmet.cli import query  # issue 7: sky queries
    main.add_command(query.query)
    from xpmet.cli import predict  # issue 7: predictions
    main.add_command(predict.predict)
    from xpmet.cli import demo  # issue 7: end-to-end demo
    main.add_command(demo.demo)
    from xpmet.cli import ml  # issue 6: export, train, evaluate
    main.add_command(ml.export_cmd)
    main.add_command(ml.train_cmd)
    main.add_command(ml.evaluate_cmd)


_register()
