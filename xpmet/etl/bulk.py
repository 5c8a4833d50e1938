"""Loads one file into one table: chunks from a reader, binary COPY, one transaction, clear failures.

Shared by ``etl gaia-source`` and ``etl xp``. What keeps the bulk path fast:
- rows go in source_id order (Gaia files already are; a chunk is sorted only when needed), so the
  primary-key B-tree grows at its right edge instead of splitting pages all over: the PK stays on
  during loads and is what detects a source_id loaded twice;
- COPY in binary built by numpy (:mod:`xpmet.io.pgcopy`), one COPY per chunk;
- TOAST compression with lz4 when the server has it: the 5.9 kB correlation arrays exceed the
  TOAST threshold and pglz spends CPU on data that barely compresses.
A unique violation becomes an error naming both files (the other one via load_id -> etl_load.path),
or with ``replace`` the earlier rows of those source_ids are deleted and the chunk copied again.
"""
from __future__ import annotations

import fcntl
import queue
import re
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg.copy import QueuedLibpqWriter

from xpmet.db.engine import raw_connect
from xpmet.errors import BadInput, XpmetError
from xpmet.etl.provenance import Skipped, file_load
from xpmet.etl.runner import FileResult, failed_result
from xpmet.io.pgcopy import HEADER, TRAILER, Col, copy_rows, copy_sql, encode


class Quarantine:
    """Bad rows (file, row, column, reason) of one file load, appended to a tab-separated file by
    ``flush`` once the load has committed: a failed or killed load writes none, and a re-run or a
    concurrent worker never writes a line (or the header) twice (appends under an exclusive flock)."""

    HEADER = "file\trow\tcolumn\treason\n"

    def __init__(self, path):
        self.path = str(path)
        self.count = 0
        self.lines: list[str] = []

    def __call__(self, source, rows, column, reason):
        self.lines += [f"{source}\t{r}\t{column}\t{reason}\n" for r in np.asarray(rows).tolist()]
        self.count += len(rows)

    def flush(self):
        if not self.lines:
            return
        with open(self.path, "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
            f.seek(0)
            present = set(f.read().splitlines(keepends=True))
            new = [ln for ln in dict.fromkeys(self.lines) if ln not in present]
            f.write(("" if present else self.HEADER) + "".join(new))
        self.lines = []


def _sorted_chunk(data: dict, source: str, first_row: int) -> dict:
    sid = np.ma.getdata(data["source_id"])
    if sid.size > 1 and not (np.diff(sid) > 0).all():
        order = np.argsort(sid, kind="stable")
        dup = np.flatnonzero(np.diff(sid[order]) == 0)
        if dup.size:
            rows = np.sort(order[[dup[0], dup[0] + 1]])
            raise BadInput(source, f"source_id {sid[order[dup[0]]]} appears twice in the file (rows "
                           f"{first_row + rows[0]} and {first_row + rows[1]})", row=first_row + int(rows[1]),
                           column="source_id")
        data = {k: v[order] for k, v in data.items()}
    return data


def _duplicate_error(e, path, table, url):
    """A BadInput naming the file that already holds the duplicated source_id."""
    detail = (e.diag.message_detail or "") if getattr(e, "diag", None) else ""
    m = re.search(r"\(source_id\)=\((\d+)\)", detail)
    if not m:
        return XpmetError(f"{path}: {str(e).strip()}")
    sid = int(m.group(1))
    other = None
    try:
        with raw_connect(url) as c:
            other = c.execute(f"SELECT l.path FROM {table} t JOIN xpmet.etl_load l USING (load_id) "
                              "WHERE t.source_id = %s", (sid,)).fetchone()
    except Exception:
        pass
    if other:
        return BadInput(path, f"source_id {sid} is already loaded from {other[0]}; a source must come "
                        "from one file only (use --replace to let this file's rows win)", column="source_id")
    return BadInput(path, f"source_id {sid} appears more than once in the file", column="source_id")


def _prepared(chunks, cols, load_id, report):
    """(source, data) per non-empty chunk: only the COPY columns, all of them present, sorted by source_id."""
    names = {c.name for c in cols}
    for chunk in chunks:
        if chunk.n == 0:
            report(0, chunk.n_bytes)
            continue
        data = {k: v for k, v in chunk.data.items() if k in names}
        data = _sorted_chunk(data, chunk.source, chunk.first_row)
        data["load_id"] = np.full(chunk.n, load_id, np.int32)
        for c in cols:  # a column the file lacks loads as NULL
            if c.name not in data:
                data[c.name] = (np.full((chunk.n, c.length), np.nan) if c.is_array else
                                np.ma.MaskedArray(np.zeros(chunk.n, c.base[0][1:]), mask=True))
        yield chunk, data


class _BoundedWriter(QueuedLibpqWriter):
    """psycopg's queued writer with a 16 MB queue (its default, 128 MB, only raises peak memory when
    the server is the slower side)."""

    def __init__(self, cursor):
        super().__init__(cursor)
        self._queue = queue.Queue(maxsize=128)  # items of at most 128 kB


def _copy_streamed(conn, table, cols, chunks, load, url, report):
    """One COPY for the whole file, sent by a writer thread: the server ingests chunk k while this
    process parses chunk k+1 (both sides busy instead of taking turns)."""
    source = str(load.path)
    try:
        with conn.cursor() as cur, cur.copy(copy_sql(table, cols), writer=_BoundedWriter(cur)) as cp:
            cp.write(HEADER)
            for chunk, data in chunks:
                source = chunk.source
                cp.write(encode(cols, data, header=False, trailer=False))
                load.n_rows += chunk.n
                report(chunk.n, chunk.n_bytes)
            cp.write(TRAILER)
    except psycopg.errors.UniqueViolation as e:
        raise _duplicate_error(e, source, table, url) from None


def _copy_per_chunk(conn, table, cols, chunks, load, url, report):
    """--replace: one COPY per chunk under a savepoint; on a duplicate source_id, this file wins."""
    with conn.cursor() as cur:
        for chunk, data in chunks:
            cur.execute("SAVEPOINT chunk")
            try:
                copy_rows(cur, table, cols, data)
            except psycopg.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT chunk")
                cur.execute(f"DELETE FROM {table} WHERE source_id = ANY(%s) AND load_id <> %s",
                            (np.ma.getdata(data["source_id"]).tolist(), load.load_id))
                try:
                    copy_rows(cur, table, cols, data)
                except psycopg.errors.UniqueViolation as e2:
                    raise _duplicate_error(e2, chunk.source, table, url) from None
            cur.execute("RELEASE SAVEPOINT chunk")
            load.n_rows += chunk.n
            report(chunk.n, chunk.n_bytes)


def load_file(path, report, *, kind: str, table: str, cols: list[Col], reader, replace: bool = False,
              errors_to=None, url: str | None = None, options: dict | None = None) -> FileResult:
    """Load ``path`` (whole file or nothing); returns a :class:`FileResult` (status failed on bad input)."""
    t0 = time.perf_counter()
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    quarantine = Quarantine(errors_to) if errors_to else None
    warnings: list[str] = []
    try:
        with file_load(path, kind, (table,), options=options, replace=replace, url=url) as load:
            if isinstance(load, Skipped):
                return FileResult(str(path), "skipped", load.n_rows, size, time.perf_counter() - t0,
                                  load_id=load.load_id, note=load.note)
            if quarantine:
                load.after_commit.append(quarantine.flush)
            conn = load.conn
            _tune_session(conn)
            chunks = _prepared(reader(path, on_bad=quarantine, on_warning=warnings.append), cols, load.load_id,
                               report)
            if replace:
                _copy_per_chunk(conn, table, cols, chunks, load, url, report)
            else:
                _copy_streamed(conn, table, cols, chunks, load, url, report)
            load_id = load.load_id
            n_rows = load.n_rows
        return FileResult(str(path), "loaded", n_rows, size, time.perf_counter() - t0,
                          quarantined=quarantine.count if quarantine else 0, load_id=load_id,
                          peak_rss_mb=peak_rss_mb(), warnings=warnings)
    except Exception as e:  # any per-file failure fails this file alone; KeyboardInterrupt still stops the run
        res = failed_result(path, e)
        res.bytes, res.seconds, res.warnings = size, time.perf_counter() - t0, warnings
        res.quarantined = quarantine.count if quarantine else 0
        return res


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM; exact per process, unlike getrusage across fork/exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _tune_session(conn):
    """Per-transaction settings for bulk loading (see the module docstring)."""
    # One round trip; a server compiled without lz4 does not list it and keeps its default.
    conn.execute("SELECT set_config('default_toast_compression', 'lz4', true) FROM pg_settings "
                 "WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)")


def analyze(table: str, url: str | None = None):
    """Refresh planner statistics after a bulk load (row counts change by orders of magnitude)."""
    with raw_connect(url, autocommit=True) as c:
        c.execute(f"ANALYZE {table}")
