"""Options and the closing summary shared by ``xpmet etl gaia-source`` and ``xpmet etl xp``."""
import click

from xpmet.distributed import CLUSTER_HELP
from xpmet.errors import XpmetError
from xpmet.etl.runner import LoadFailed

_common = [
    click.argument("paths", nargs=-1, required=True),
    click.option("--workers", "-j", type=click.IntRange(1), default=1, show_default=True,
                 help="Processes loading files in parallel (one file per process)."),
    click.option("--replace", is_flag=True,
                 help="Reload files loaded before, and let this file win when a source_id is already loaded "
                      "from another file."),
    click.option("--errors-to", type=click.Path(dir_okay=False),
                 help="Append bad rows (file, row, column, reason) to this file and load the rest."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
    click.option("--cluster", metavar="ADDRESS", help=CLUSTER_HELP + " One task per file."),
]


def with_common(f):
    for deco in reversed(_common):
        f = deco(f)
    return f


def finish(summary_or_error):
    if isinstance(summary_or_error, LoadFailed):
        s = summary_or_error.summary
        click.echo(str(s), err=True)
        # the last line as every command ends a failure (etl survey's words)
        raise XpmetError(f"{len(s.failed)} of {len(s.files)} file(s) failed (listed above); the others loaded. "
                         "Fix the failed files and run again: loaded files are skipped.")
    click.echo(str(summary_or_error))
