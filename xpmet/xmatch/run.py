"""A crossmatch run: one versioned, materialized best Gaia DR3 neighbour for every survey row.

What is a candidate and which wins is the chosen algorithm's business (:mod:`xpmet.xmatch.algorithms`);
this module runs it: the parameters per survey, one snapshot for the whole run (REPEATABLE READ,
exported to a second connection that searches a share of the rows, since q3c's functions are not
parallel safe), the lock that keeps runs apart, the xmatch_run bookkeeping and pruning.

    from xpmet.xmatch import XmatchParams, run_xmatch
    run = run_xmatch(XmatchParams(radius=1.0, overrides={"lamost": {"radius": 3.0}}))
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql as psql

from xpmet import __version__
from xpmet.db.engine import raw_connect
from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.xmatch.algorithms import ALGORITHMS, algorithm

#: Radii (arcsec) when neither the command nor the survey's descriptor gives one; nopm_radius None = 2 x radius.
DEFAULT_RADII = {"radius": 1.0, "nopm_radius": None, "id_radius": 3.0}


@dataclass
class XmatchParams:
    """Crossmatch parameters (arcsec, mas/yr).

    Per survey, the first that is set wins: ``overrides[survey]``, then the value given here, then the
    descriptor's [xmatch] table, then ``DEFAULT_RADII``. None means "not given".
    """
    radius: float | None = None          # DEFAULT_RADII["radius"]
    nopm_radius: float | None = None     # default 2 x radius
    id_radius: float | None = None       # DEFAULT_RADII["id_radius"]
    epoch: str = "propagate"             # the algorithm (xpmet.xmatch.algorithms.ALGORITHMS): or "gaia"
    pm_cap: float = 50.0                 # faster Gaia sources are searched from the Gaia side
    overrides: dict = field(default_factory=dict)   # survey name -> {radius, nopm_radius, id_radius}
    version: str | None = None

    def validate(self):
        if self.epoch not in ALGORITHMS:
            raise XpmetError(f"epoch handling must be one of {tuple(ALGORITHMS)}, not {self.epoch!r}")
        for k in ("radius", "nopm_radius", "id_radius", "pm_cap"):
            if getattr(self, k) is not None and not getattr(self, k) > 0:
                raise XpmetError(f"{k} must be positive, not {getattr(self, k)}")
        for name, o in self.overrides.items():
            bad = set(o) - {"radius", "nopm_radius", "id_radius"}
            if bad:
                raise XpmetError(f"override for {name}: unknown parameter(s) {sorted(bad)}; "
                                 "use radius, nopm_radius or id_radius")


@dataclass
class XmatchRun:
    run_id: int
    version: str
    n_rows: int
    n_matched: int
    seconds: float
    by_method: dict
    parameters: dict
    stages: dict = field(default_factory=dict)   # seconds per step (statistics, matching, indexes, ...)
    loads: list = field(default_factory=list)    # etl_load ids (gaia_source and surveys) the run read
    labels: dict | None = None                   # label refresh committed with the run (labels=True)
    notes: list = field(default_factory=list)    # e.g. runs --keep kept because an export or model cites them


#: Advisory lock (two int4 keys) held by a crossmatch run and by a label refresh: one at a time.
LOCK_KEY = (0x78706D78, 1)  # "xpmx"


def take_lock(conn) -> None:
    """Take the crossmatch lock for this session (autocommit connection) or refuse in one line."""
    if conn.execute("SELECT pg_try_advisory_lock(%s, %s)", LOCK_KEY).fetchone()[0]:
        return
    who = conn.execute(
        "SELECT a.pid, to_char(a.xact_start, 'YYYY-MM-DD HH24:MI:SS') FROM pg_locks l "
        "JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid = %s AND l.objid = %s AND l.objsubid = 2", LOCK_KEY).fetchone()
    since = f" (server pid {who[0]}, since {who[1]})" if who else ""
    raise XpmetError(f"another `xpmet xmatch` or label refresh is running{since}; "
                     "run this again when it has finished")


def survey_parameters(conn, p: XmatchParams) -> list[tuple]:
    """(survey_id, name, radius, nopm_radius, id_radius) per loaded survey."""
    rows = conn.execute("SELECT survey_id, name, descriptor -> 'xmatch' FROM xpmet.survey ORDER BY survey_id").fetchall()
    names = {r[1] for r in rows}
    unknown = set(p.overrides) - names
    if unknown:
        raise XpmetError(f"overrides for surveys that are not loaded: {sorted(unknown)}; loaded: {sorted(names)}")
    out = []
    for sid, name, xm in rows:
        given = {k: getattr(p, k) for k in DEFAULT_RADII if getattr(p, k) is not None}
        described = {k: v for k, v in (xm or {}).items() if k in DEFAULT_RADII}
        v = {**DEFAULT_RADII, **described, **given, **p.overrides.get(name, {})}
        if v["nopm_radius"] is None:
            v["nopm_radius"] = 2 * v["radius"]
        out.append((sid, name, float(v["radius"]), float(v["nopm_radius"]), float(v["id_radius"])))
    return out


def analyze_if_changed(conn, tables):
    """ANALYZE the xpmet tables never analysed, or changed by > 20% since (repeated runs skip it).

    Right after a load the planner would take a table for nearly empty and nest loops over it.
    ``conn`` must be in autocommit mode: statistics written inside the crossmatch transaction
    would stay invisible to the worker connection, which plans its own query.
    """
    for table in tables:
        if conn.execute("SELECT (last_analyze IS NULL AND last_autoanalyze IS NULL) "
                        "OR n_mod_since_analyze > 0.2 * n_live_tup FROM pg_stat_user_tables "
                        "WHERE schemaname = 'xpmet' AND relname = %s", (table,)).fetchone()[0]:
            conn.execute(f"ANALYZE xpmet.{table}")


#: Session settings of the matching query (both connections). q3c's index cost estimates are so
#: high that on small tables the planner rescans all of gaia_source per survey row instead (seconds
#: at 10^3 x 10^4 rows): the probes must be index probes. The planner cannot estimate the rows of
#: the candidate pairs (it assumes a handful): hash joins for the ranking (the probes are LATERAL
#: subqueries, nested loops whatever this says).
SEARCH_SETTINGS = ("work_mem = '256MB'", "enable_seqscan = off", "enable_nestloop = off")


def _set_search_settings(conn) -> None:
    """SET LOCAL each of SEARCH_SETTINGS in ``conn``'s open transaction."""
    for s in SEARCH_SETTINGS:
        conn.execute("SET LOCAL " + s)


class _WorkerRows(threading.Thread):
    """Runs the matching SELECT on its own connection, on an exported snapshot, into binary COPY data."""

    def __init__(self, url, snapshot: str, select: str, params: dict):
        super().__init__(name="xmatch-worker", daemon=True)
        self.url, self.snapshot, self.select, self.params = url, snapshot, select, params
        self.chunks: list[bytes] = []
        self.error: BaseException | None = None

    def run(self):
        try:
            with raw_connect(self.url) as c:
                c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ   # needed to import a snapshot
                c.execute(psql.SQL("SET TRANSACTION SNAPSHOT {}").format(psql.Literal(self.snapshot)))
                _set_search_settings(c)   # jit is off per session (raw_connect)
                query = psycopg.ClientCursor(c).mogrify(self.select, self.params)   # COPY takes no parameters
                with c.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as cp:
                    self.chunks = [bytes(b) for b in cp]
                c.rollback()
        except BaseException as e:   # re-raised in the main thread by copy_into
            self.error = e

    def copy_into(self, conn, table: str):
        if self.error is not None:
            raise self.error
        with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN (FORMAT binary)") as cp:
            for b in self.chunks:
                cp.write(b)


def run_xmatch(params: XmatchParams | None = None, url: str | None = None, make_current: bool = True,
               keep: int | None = None, progress: bool = False, workers: int = 2,
               labels: bool = False) -> XmatchRun:
    """Match every survey_star row to Gaia in one transaction; the new run becomes the current one.

    ``keep``: delete all but the newest ``keep`` runs afterwards (None keeps every run); a run an
    export or a model cites is kept, and ``notes`` says so.
    ``workers``: 2 searches candidates on two connections at once (same rows as 1, faster on 2+ cores).
    ``labels``: refresh the label views in the same transaction (they commit together).

    The whole run reads one snapshot (REPEATABLE READ, exported to the worker connection): loads
    committed meanwhile are not read, and ``xmatch_run.loads`` records the loads that were, so
    xmatch_run_status shows the run stale once a newer or replacing load exists. A second run (or
    a label refresh) at the same time is refused with a one-line error.
    """
    from xpmet.progress import progress_bar
    p = params or XmatchParams()
    p.validate()
    matcher = algorithm(p.epoch)
    matcher.validate(p)  # before the lock and any statement: a refusal costs nothing
    t0 = time.perf_counter()
    stages, last = {}, [t0]

    def lap(name):
        now = time.perf_counter()
        stages[name] = now - last[0]
        last[0] = now
    conn = raw_connect(url, autocommit=True)
    try:
        take_lock(conn)  # session lock, taken before the snapshot; released when the connection closes
    except BaseException:
        conn.close()
        raise
    bar = progress_bar(total=3, desc="crossmatch", unit="step", enabled=progress)
    with conn, bar:
        analyze_if_changed(conn, ("survey_star", "gaia_source"))  # still autocommit: committed statistics
        conn.autocommit = False
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute("SET LOCAL work_mem = '256MB'")  # the snapshot starts at the next query
        loads = [r[0] for r in conn.execute("SELECT load_id FROM xpmet.etl_load WHERE status = 'done' "
                                            "AND xpmet.feeds_xmatch(kind) ORDER BY load_id")]
        per_survey = survey_parameters(conn, p)
        if not per_survey:
            raise XpmetError("no survey is loaded: run xpmet etl survey NAME FILE first")
        params_json = {**asdict(p), "surveys": {n: {"radius": r, "nopm_radius": nr, "id_radius": ir}
                                                for _, n, r, nr, ir in per_survey}}
        run_id = conn.execute(
            "INSERT INTO xpmet.xmatch_run (version, parameters, status, xpmet_version, loads) "
            "VALUES ('pending-' || txid_current(), %s, 'running', %s, %s) RETURNING run_id",
            (json.dumps(params_json), __version__, loads)).fetchone()[0]
        version = p.version or f"xm-{run_id}"
        if conn.execute("SELECT 1 FROM xpmet.xmatch_run WHERE version = %s", (version,)).fetchone():
            raise XpmetError(f"crossmatch version {version!r} exists already; choose another --version")
        conn.execute("UPDATE xpmet.xmatch_run SET version = %s WHERE run_id = %s", (version, run_id))
        max_dt = conn.execute("SELECT coalesce(max(abs(coalesce(epoch, 2016.0) - 2016.0)), 0) "
                              "FROM xpmet.survey_star").fetchone()[0]
        max_r = max(max(r, nr) for _, _, r, nr, _ in per_survey)
        lap("setup_and_statistics")
        bar.update(1)
        bar.set_postfix_str("candidates and best neighbours")
        args = {"pm_cap": p.pm_cap, "max_r": max_r, "max_dt": float(max_dt), "run_id": run_id,
                "sid": [s[0] for s in per_survey], "radius": [s[2] for s in per_survey],
                "nopm_radius": [s[3] for s in per_survey], "id_radius": [s[4] for s in per_survey]}
        part = create_partition(conn, run_id)
        _set_search_settings(conn)
        if workers > 1:
            # q3c's functions are not parallel safe, so PostgreSQL runs the probes on one core: a second
            # connection, on this transaction's snapshot, matches a share of the rows at the same time
            worker = _WorkerRows(url, conn.execute("SELECT pg_export_snapshot()").fetchone()[0],
                                 matcher.rows_sql("worker"), args)
            worker.start()
            try:
                conn.execute(f"INSERT INTO {part} " + matcher.rows_sql("main"), args)
            finally:
                worker.join()
            worker.copy_into(conn, part)
        else:
            conn.execute(f"INSERT INTO {part} " + matcher.rows_sql("all"), args)
        conn.execute("SET LOCAL enable_seqscan TO DEFAULT")
        conn.execute("SET LOCAL enable_nestloop TO DEFAULT")
        lap("candidates_and_best_neighbours")
        bar.update(1)
        bar.set_postfix_str("duplicate claims, indexes")
        conn.execute(matcher.claims_sql(part))
        attach_partition(conn, run_id)
        lap("claims_indexes_attach")
        bar.update(1)
        counts = dict(conn.execute(f"SELECT method, count(*) FROM {part} GROUP BY method").fetchall())
        n_rows = sum(counts.values())
        n_matched = n_rows - counts.get("none", 0)
        secs = time.perf_counter() - t0
        if make_current:
            conn.execute("UPDATE xpmet.xmatch_run SET is_current = false WHERE is_current")
        conn.execute("UPDATE xpmet.xmatch_run SET status = 'done', is_current = %s, n_rows = %s, n_matched = %s, "
                     "seconds = %s WHERE run_id = %s", (make_current, n_rows, n_matched, secs, run_id))
        conn.execute(f"ANALYZE {part}")  # the parent's statistics: the label refresh analyses xpmet.xmatch
        label_summary = None
        if labels and make_current:
            from xpmet.labels import refresh_on
            label_summary = refresh_on(conn)
            lap("labels")
        # last: dropping a partition locks all of xpmet.xmatch until the commit that follows at once
        notes = _prune(conn, keep) if keep is not None else []
        fault("xmatch_before_commit")
        conn.commit()
        # unlock before closing: the server process may outlive the client's close by a moment and
        # hold the lock, refusing a run started right after this one
        conn.autocommit = True
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", LOCK_KEY)
        lap("finish_and_commit")
    secs = time.perf_counter() - t0
    return XmatchRun(run_id, version, n_rows, n_matched, secs, counts, params_json, stages, loads,
                     label_summary, notes)


def _prune(conn, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` runs (never the current one, nor one that an export or a
    model cites); returns a note per cited run kept."""
    old = [r[0] for r in conn.execute(
        "SELECT run_id FROM xpmet.xmatch_run WHERE run_id NOT IN "
        "(SELECT run_id FROM xpmet.xmatch_run ORDER BY run_id DESC LIMIT %s) AND NOT is_current",
        (max(keep, 1),))]
    cited = conn.execute(
        "SELECT r.run_id, r.version, string_agg(c.what, ', ' ORDER BY c.what) FROM xpmet.xmatch_run r "
        "JOIN (SELECT 'export ' || path AS what, v FROM xpmet.training_export, "
        "             unnest(string_to_array(xmatch_version, ',')) v "
        "      UNION ALL "
        "      SELECT 'model ' || model_id, v FROM xpmet.models, "
        "             unnest(string_to_array(config -> 'data_attributes' ->> 'xmatch_version', ',')) v) c "
        "  ON c.v = r.version WHERE r.run_id = ANY(%s) GROUP BY r.run_id, r.version ORDER BY r.run_id",
        (old,)).fetchall()
    keep_ids = {r[0] for r in cited}
    gone = [r for r in old if r not in keep_ids]
    notes = [f"kept crossmatch {v} beyond --keep: cited by {what}" for _, v, what in cited]
    if not gone:
        return notes
    # DROP TABLE of a partition waits for every reader of xpmet.xmatch (and holds up readers that come
    # after it): waited for 10 s at most, then the runs stay until the next --keep
    conn.execute("SAVEPOINT xmatch_prune")
    conn.execute("SET LOCAL lock_timeout = '10s'")
    try:
        for r in gone:
            conn.execute(f"DROP TABLE IF EXISTS {partition_name(r)}")
        conn.execute("DELETE FROM xpmet.xmatch_run WHERE run_id = ANY(%s)", (gone,))
        conn.execute("SET LOCAL lock_timeout TO DEFAULT")
        conn.execute("RELEASE SAVEPOINT xmatch_prune")
    except psycopg.errors.LockNotAvailable:
        conn.execute("ROLLBACK TO SAVEPOINT xmatch_prune")
        notes.append(f"kept {len(gone)} old crossmatch run(s) beyond --keep: another session was reading "
                     "xpmet.xmatch; the next run with --keep removes them")
    return notes


def partition_name(run_id: int) -> str:
    """The partition of xpmet.xmatch that holds run ``run_id``'s rows."""
    return f"xpmet.xmatch_r{int(run_id)}"


def create_partition(conn, run_id: int) -> str:
    """A table for run ``run_id``'s rows, made in this transaction (attached by attach_partition);
    returns its name.

    Made, filled and indexed in one transaction, it writes no WAL on a server with wal_level =
    minimal (the embedded cluster), only a sync at commit; elsewhere it is an ordinary logged
    table. A CHECK on run_id lets ATTACH skip its scan.
    """
    part = partition_name(run_id)
    # a partition can only exist under a new run's id if xmatch_run was emptied (and its ids restarted)
    conn.execute(f"DROP TABLE IF EXISTS {part}")
    conn.execute(f"CREATE TABLE {part} (LIKE xpmet.xmatch INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                 f"CHECK (run_id = {int(run_id)}))")
    return part


def attach_partition(conn, run_id: int) -> None:
    """Index the filled table of run ``run_id`` (once, cheaper than row by row) and make it a
    partition of xpmet.xmatch (a lock that readers do not wait for)."""
    part = partition_name(run_id)
    conn.execute(f"ALTER TABLE {part} ADD PRIMARY KEY (run_id, star_id)")
    conn.execute(f"CREATE INDEX ON {part} (source_id)")
    conn.execute(f"ALTER TABLE xpmet.xmatch ATTACH PARTITION {part} FOR VALUES IN ({int(run_id)})")


def current_version(url: str | None = None) -> str | None:
    with raw_connect(url) as conn:
        r = conn.execute("SELECT version FROM xpmet.xmatch_run WHERE is_current").fetchone()
    return r[0] if r else None
