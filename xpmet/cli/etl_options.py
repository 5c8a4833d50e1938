"""Options and the closing summary shared by ``xpmet etl gaia-source`` and ``xpmet etl xp``; the choice of
descriptor shared by the descriptor-driven ``xpmet etl survey`` and ``xpmet etl photometry``."""
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


def descriptor_and_files(name, files, descriptor_path, load, what: str):
    """(descriptor, files) of a descriptor-driven command: a shipped NAME, or --descriptor (then a NAME
    given too is the first file)."""
    if descriptor_path:
        return load(descriptor_path), ((name, *files) if name else files)
    if name:
        return load(name), files
    raise XpmetError(f"give a {what} (see --list) or --descriptor my.toml, then the files")


def report_files(results, describe) -> None:
    """One line per file of a descriptor-driven load (``describe(result)`` says what a loaded one
    holds), then an error naming how many failed."""
    for r in results:
        if r.error:
            click.secho(f"FAILED {r.error}", fg="red", err=True)
        elif r.skipped:
            click.echo(f"{r.path}: already loaded ({r.n_rows} rows), skipped; --replace reloads it")
        else:
            describe(r)
    failed = [r for r in results if r.error]
    if failed:
        raise XpmetError(f"{len(failed)} of {len(results)} file(s) failed (listed above); the others loaded. "
                         "Fix the failed files and run again: loaded files are skipped.")


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
