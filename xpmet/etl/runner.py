"""Runs a file loader over many files: discovery (FILE|DIR|GLOB), a process pool, progress, a summary.

Each file is loaded by a top-level function ``load_one(path, report, **options) -> FileResult`` in
its own transaction (see :mod:`xpmet.etl.provenance`); a bad file fails alone and the run goes on
with the others. ``report(rows, bytes)`` feeds the progress bar, from worker processes through a
queue. Workers are spawned (not forked): each opens its own database connections.
"""
from __future__ import annotations

import contextlib
import glob
import multiprocessing as mp
import os
import queue as queue_mod
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from xpmet.progress import note, progress_bar

from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.io.formats import DATA_SUFFIXES


@dataclass
class FileResult:
    path: str
    status: str                 # loaded | skipped | failed
    rows: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    quarantined: int = 0
    load_id: int | None = None
    peak_rss_mb: float | None = None   # peak memory of the process that loaded the file
    note: str | None = None            # e.g. skipped because another process loaded it meanwhile
    warnings: list[str] = field(default_factory=list)  # problems that did not stop the load


@dataclass
class LoadSummary:
    """What a run did, file by file; ``ok`` is False when any file failed."""
    kind: str
    files: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1

    def _with(self, status):
        return [f for f in self.files if f.status == status]

    @property
    def loaded(self):
        return self._with("loaded")

    @property
    def skipped(self):
        return self._with("skipped")

    @property
    def failed(self):
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.loaded)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.loaded)

    @property
    def quarantined(self) -> int:
        return sum(f.quarantined for f in self.files)

    @property
    def warnings(self) -> list[str]:
        return [w for f in self.files for w in f.warnings]

    @property
    def peak_rss_mb(self) -> float | None:
        """Largest peak memory of any loading process (flat in the number and size of files)."""
        peaks = [f.peak_rss_mb for f in self.files if f.peak_rss_mb]
        return max(peaks) if peaks else None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def __str__(self):
        lines = [f"{self.kind}: {len(self.loaded)} file(s) loaded, {len(self.skipped)} skipped (already loaded), "
                 f"{len(self.failed)} failed; {self.rows:,} rows in {self.seconds:.1f} s "
                 f"({self.rows_per_s:,.0f} rows/s, {self.mb_per_s:.1f} MB/s of input, {self.workers} worker(s))"]
        if self.quarantined:
            lines.append(f"  {self.quarantined} bad row(s) quarantined")
        for f in self.files:
            if f.note:
                lines.append(f"  note: {f.note}")
        for w in self.warnings:
            lines.append(f"  WARNING {w}")
        for f in self.failed:
            lines.append(f"  FAILED {f.error}")
        return "\n".join(lines)

    def raise_for_failures(self):
        if self.failed:
            raise LoadFailed(self)


class LoadFailed(XpmetError):
    """Some files of a run failed (the others loaded); ``summary`` tells which and why."""

    def __init__(self, summary: LoadSummary):
        self.summary = summary
        super().__init__(str(summary) + "\nFix or remove the failed files and run again: loaded files are skipped.")


def discover(args) -> list[Path]:
    """Files named by FILE, DIR (recursively, data extensions only) or GLOB arguments, sorted, unique."""
    if isinstance(args, (str, os.PathLike)):
        args = [args]
    found = []
    for a in args:
        a = str(a)
        p = Path(a)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                            and f.name.lower().endswith(DATA_SUFFIXES))
        elif p.is_file():
            found.append(p)
        elif any(ch in a for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(a, recursive=True) if Path(m).is_file())
            if not matches:
                raise XpmetError(f"no file matches {a}")
            found += matches
        else:
            raise XpmetError(f"{a}: no such file or directory")
    seen, out = set(), []
    for f in found:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            out.append(f)
    if not out:
        raise XpmetError(f"no data files found in {' '.join(map(str, args))}")
    return out


_QUEUE = None


def _init_worker(q):
    global _QUEUE
    _QUEUE = q
    # A worker whose parent was killed must not go on and commit: exit, and the server rolls back
    # the open transaction when the connection drops.
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _report_to_queue(rows, nbytes):
    _QUEUE.put((rows, nbytes))


def error_line(path, exc: Exception) -> str:
    """One line naming the file for any exception (XpmetError messages already name it)."""
    text = str(exc).strip()
    msg = text.splitlines()[0][:500] if text else ""
    if isinstance(exc, XpmetError) and msg.startswith(str(path)):
        return msg
    return f"{path}: {type(exc).__name__}: {msg}" if msg else f"{path}: {type(exc).__name__}"


def failed_result(path, exc: Exception) -> FileResult:
    """A failed-file result for an exception a loader let through."""
    return FileResult(str(path), "failed", error=error_line(path, exc))


def _call(load_one, path, options):
    return load_one(path, _report_to_queue, **options)


def _load_safely(load_one, path, report, options) -> FileResult:
    # Any exception of one file fails that file alone; KeyboardInterrupt (not an Exception) still stops.
    try:
        return load_one(path, report, **options)
    except Exception as e:
        return failed_result(path, e)


def load_task(load_one, options, path, topic=None) -> FileResult:
    """One file as a Dask task: the serial path's load, its progress sent to the client as events."""
    from xpmet.distributed import event_reporter
    return _load_safely(load_one, path, event_reporter(topic), options)


def run(kind: str, paths, load_one: Callable, options: dict, workers: int = 1, progress: bool = True,
        after: Callable[[LoadSummary], None] | None = None, cluster: str | None = None) -> LoadSummary:
    """Load every file of ``paths`` with ``load_one``; returns the summary (never raises for a bad file).

    ``cluster``: a Dask scheduler address or ``local:N`` (xpmet.distributed), one task per file,
    instead of ``workers`` local processes.
    """
    if cluster and workers > 1:
        raise XpmetError("give --workers or --cluster, not both")
    files = discover(paths)
    # connected before the bar is drawn: an unreachable scheduler is then the one line printed
    stack = contextlib.ExitStack()
    if cluster:
        from xpmet.distributed import open_session
        session = stack.enter_context(open_session(cluster))
        # resolved here: workers may run elsewhere, with another cwd and no XPMET_HOME
        options = dict(options, url=session.db_url(options.get("url")))
    summary = LoadSummary(kind, workers=max(1, workers))
    bar = progress_bar(total=len(files), unit="file", desc=f"etl {kind}", enabled=progress,
                       bar_format="{desc}: {n_fmt}/{total_fmt} files |{bar}| {elapsed}<{remaining} {postfix}")
    rows = [0]
    t0 = time.perf_counter()

    def report(n, nbytes=0):
        rows[0] += n
        dt = time.perf_counter() - t0
        bar.set_postfix_str(f"{rows[0]:,} rows, {rows[0] / dt if dt else 0:,.0f} rows/s", refresh=False)
        bar.refresh()

    def done(res: FileResult):
        summary.files.append(res)
        bar.update(1)
        if res.status == "failed":
            note(f"failed: {res.error}")
        fault("after_file")

    try:
        if cluster:
            summary.workers = session.n_workers
            for f, res, err in session.map(load_task, [f.resolve() for f in files], name=f"etl-{kind}",
                                           args=(load_one, options), on_event=lambda m: report(*m)):
                done(res if err is None else failed_result(f, err))
        elif workers <= 1 or len(files) == 1:
            for f in files:
                done(_load_safely(load_one, f, report, options))
        else:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(q,)) as pool:
                pending = {pool.submit(_call, load_one, f, options): f for f in files}
                while pending:
                    finished, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    _drain(q, report)
                    for fut in finished:
                        f = pending.pop(fut)
                        try:
                            done(fut.result())
                        except Exception as e:  # e.g. a worker process that died (BrokenProcessPool)
                            done(failed_result(f, e))
                _drain(q, report)
    finally:
        bar.close()
        stack.close()
    summary.seconds = time.perf_counter() - t0
    if after and summary.loaded:
        after(summary)
    return summary


def _drain(q, report):
    while True:
        try:
            n, b = q.get_nowait()
        except queue_mod.Empty:
            return
        report(n, b)
