"""``xpmet export``: the ``training_set`` view -> one chunked, compressed HDF5 file.

Rows stream through a server-side cursor in blocks and are appended to resizable datasets,
so memory stays flat in the number of rows. The file is written under a temporary name and
renamed at the end: an interrupted export leaves no half-written file.

Layout (all datasets have one row per star, gzip + shuffle, chunked by CHUNK rows)::

    /source_id                         int64  Gaia DR3 source_id
    /split                             uint8  0 train, 1 valid, 2 test (attrs: names)
    /xp/bp_coefficients                f8 (n,55)  raw Gaia coefficients; NaN row = missing band
    /xp/bp_coefficient_errors          f4 (n,55)
    /xp/rp_coefficients, rp_coefficient_errors
    /xp/bp_standard_deviation, rp_standard_deviation   f4 (n,)
    /xp/bp_coefficient_correlations    f4 (n,1485)  when the stars carry them (or --correlations; Gaia's order, see xpmet.xp_coefficients)
    /xp/rp_coefficient_correlations
    /phot/<col>                        f8 (n,): ra, dec, phot_g_mean_mag, phot_bp_mean_mag,
                                       phot_rp_mean_mag, bp_rp, phot_g_mean_flux, parallax,
                                       parallax_error, ag_gspphot (NaN = NULL); and from the view
                                       external_photometry tmass_j, tmass_h, tmass_ks, w1, w2 with
                                       their _err (NaN: not loaded, no best neighbour, upper limit)
    /labels/<label>, <label>_err       f4 (n,): teff, logg, feh, alpha_fe (NaN = unknown)
    /labels/n_surveys, label_flags     int32 (n,)
    /labels/surveys                    utf-8 string (n,): comma-separated survey names
    /noise/...                         an unlabelled sample of ALL XP sources in the database
                                       (coefficient errors, G flux and magnitude) for the
                                       noise model and the magnitude distribution of the
                                       stars models are applied to; no labels, no split

Root attributes: layout ("xpmet-training"), layout_version, cuts (JSON), split (JSON
fractions), seed, reference (label scale), xmatch_version, xpmet_version, created (UTC ISO),
n_rows, n_by_split (JSON), query, labels_stale (why the labels were stale at export time, or "").

Splits: u = splitmix64(source_id XOR hash(seed)) / 2^64 decides the split, so a star's split
depends only on its id and the seed — never on row order, filters or chunking — and a star
appears in one split only.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np

from xpmet import __version__
from xpmet.progress import progress_bar
from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.db.models.columns import fixed_width_columns
from xpmet.db.models.photometry import EXTERNAL_PHOT
from xpmet.io.copyout import select_arrays
from xpmet.ml.dataset import LAYOUT_VERSION, SPLITS, _rows_to_batch, float64_batch
from xpmet.ml.normalise import LABELS, g_flux
from xpmet.xp_coefficients import N_COEF, N_CORR

CHUNK = 4096
FETCH = 20000
GAIA_PHOT = ("ra", "dec", "phot_g_mean_mag", "phot_bp_mean_mag", "phot_rp_mean_mag", "bp_rp", "phot_g_mean_flux",
             "parallax", "parallax_error", "ag_gspphot")
PHOT = GAIA_PHOT + EXTERNAL_PHOT  # /phot/<name>: training_set's Gaia columns, then xpmet.external_photometry's
XP = ("bp_coefficients", "bp_coefficient_errors", "rp_coefficients", "rp_coefficient_errors")
STD = ("bp_standard_deviation", "rp_standard_deviation")
CORR = ("bp_coefficient_correlations", "rp_coefficient_correlations")
META = ("n_surveys", "label_flags", "surveys", "xmatch_version", "reference")


@dataclass
class ExportOptions:
    g_max: float | None = None
    g_min: float | None = None
    max_coef_error: float | None = None  # max median flux-normalised coefficient error
    min_surveys: int = 1
    require: tuple = ("feh",)            # labels that must be known
    split: dict = field(default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1})
    seed: int = 0
    #: None: exported when the stars carry them in the database (what the estimator's degradation uses)
    correlations: bool | None = None
    noise_sample: int = 20000
    limit: int | None = None


def parse_split(text: str) -> dict:
    """'train=0.8,valid=0.1,test=0.1' -> dict; fractions must be >= 0 and sum to 1."""
    out = {}
    try:
        for part in text.split(","):
            k, v = part.split("=")
            out[k.strip()] = float(v)
    except ValueError:
        raise XpmetError(f"--split {text!r}: expected e.g. train=0.8,valid=0.1,test=0.1") from None
    if set(out) != set(SPLITS) or any(v < 0 for v in out.values()) or abs(sum(out.values()) - 1) > 1e-6:
        raise XpmetError(f"--split {text!r}: give train, valid and test fractions (>= 0) that sum to 1")
    return out


def _splitmix64(v: np.ndarray) -> np.ndarray:
    z = v.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def assign_split(source_id, fractions: dict, seed: int) -> np.ndarray:
    """uint8 split codes that depend only on (source_id, seed)."""
    key = _splitmix64(np.asarray([seed], np.uint64))[0]
    u = (_splitmix64(np.asarray(source_id, np.int64).view(np.uint64) ^ key) >> np.uint64(11)).astype(np.float64)
    u /= 2.0 ** 53
    c1 = fractions["train"]
    c2 = c1 + fractions["valid"]
    return np.where(u < c1, SPLITS["train"], np.where(u < c2, SPLITS["valid"], SPLITS["test"])).astype(np.uint8)


def _query(opt: ExportOptions, bounds: tuple[int, int] | None = None):
    cols = (["t.source_id"] + [f"t.{c}" for c in GAIA_PHOT] + [f"e.{c}" for c in EXTERNAL_PHOT]
            + [f"t.{c}" for c in XP] + [f"x.{c}" for c in STD]
            + [f"t.{l}{s}" for l in LABELS for s in ("", "_err")] + [f"t.{c}" for c in META])
    if opt.correlations:
        cols += [f"x.{c}" for c in CORR]
    where, params = ["(t.bp_coefficients IS NOT NULL OR t.rp_coefficients IS NOT NULL)"], []
    if opt.g_max is not None:
        where.append("t.phot_g_mean_mag <= %s")
        params.append(opt.g_max)
    if opt.g_min is not None:
        where.append("t.phot_g_mean_mag >= %s")
        params.append(opt.g_min)
    if opt.min_surveys:
        where.append("t.n_surveys >= %s")
        params.append(opt.min_surveys)
    for lab in opt.require:
        if lab not in LABELS:
            raise XpmetError(f"--require {lab}: not a label; choose from {', '.join(LABELS)}")
        where.append(f"t.{lab} IS NOT NULL")
    if bounds is not None:  # one shard of a --cluster export
        where.append("t.source_id >= %s AND t.source_id < %s")
        params += [int(bounds[0]), int(bounds[1])]
    sql = (f"SELECT {', '.join(cols)} FROM xpmet.training_set t JOIN xpmet.xp_continuous x USING (source_id) "
           "LEFT JOIN xpmet.external_photometry e USING (source_id) "
           f"WHERE {' AND '.join(where)} ORDER BY t.source_id")
    if opt.limit:
        sql += f" LIMIT {int(opt.limit)}"
    return sql, params, [c.split(".", 1)[1] for c in cols]


def _stars_have_correlations(conn, opt: ExportOptions) -> bool:
    """Whether the first 1,000 stars OPT exports carry XP correlations in the database (`xpmet etl xp`
    loads them unless --no-correlations): the default of --correlations."""
    sql, params, _ = _query(replace(opt, correlations=False, limit=1000))
    return bool(conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM ({sql}) t JOIN xpmet.xp_continuous x USING (source_id) "
        "WHERE x.bp_coefficient_correlations IS NOT NULL OR x.rp_coefficient_correlations IS NOT NULL)",
        params).fetchone()[0])


def _create(f: h5py.File, name, shape_tail, dtype):
    kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if dtype != h5py.string_dtype() else {}
    return f.create_dataset(name, shape=(0, *shape_tail), maxshape=(None, *shape_tail), dtype=dtype,
                            chunks=(CHUNK, *shape_tail), **kw)


def _append(ds, values):
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


class Writer:
    """Appends batches (dicts of numpy arrays, keys as in the layout) to a new training file."""

    def __init__(self, f: h5py.File, correlations: bool):
        self.f, self.correlations = f, correlations
        self.counts = {k: 0 for k in SPLITS}
        d = {"source_id": _create(f, "source_id", (), np.int64), "split": _create(f, "split", (), np.uint8)}
        for c in XP:
            d[c] = _create(f, "xp/" + c, (N_COEF,), np.float64 if c.endswith("coefficients") else np.float32)
        for c in STD:
            d[c] = _create(f, "xp/" + c, (), np.float32)
        if correlations:
            for c in CORR:
                d[c] = _create(f, "xp/" + c, (N_CORR,), np.float32)
        for c in PHOT:
            d[c] = _create(f, "phot/" + c, (), np.float64)
        for lab in LABELS:
            d[lab] = _create(f, "labels/" + lab, (), np.float32)
            d[lab + "_err"] = _create(f, "labels/" + lab + "_err", (), np.float32)
        d["n_surveys"] = _create(f, "labels/n_surveys", (), np.int32)
        d["label_flags"] = _create(f, "labels/label_flags", (), np.int32)
        d["surveys"] = _create(f, "labels/surveys", (), h5py.string_dtype())
        f["split"].attrs["names"] = json.dumps(SPLITS)
        self.d = d

    def append(self, b: dict, split: np.ndarray):
        """b: every layout key (missing optional columns are written as NaN / 0 / '')."""
        n = len(b["source_id"])
        nan = np.full(n, np.nan)
        for k, v in zip(*np.unique(split, return_counts=True)):
            self.counts[[s for s, c in SPLITS.items() if c == k][0]] += int(v)
        _append(self.d["source_id"], b["source_id"])
        _append(self.d["split"], split)
        for k in (*XP, *(CORR if self.correlations else ())):
            _append(self.d[k], b[k])
        for k in (*STD, *PHOT, *[l + s for l in LABELS for s in ("", "_err")]):
            _append(self.d[k], b.get(k, nan))
        for k in ("n_surveys", "label_flags"):
            _append(self.d[k], np.nan_to_num(np.asarray(b.get(k, np.zeros(n)), np.float64)).astype(np.int32))
        surveys = b.get("surveys", [""] * n)
        _append(self.d["surveys"], np.asarray([s if isinstance(s, str) else ",".join(s or ()) for s in surveys],
                                               dtype=object))

    def finish(self, attrs: dict):
        self.f.attrs.update({"layout": "xpmet-training", "layout_version": LAYOUT_VERSION,
                             "xpmet_version": __version__,
                             "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                             "n_rows": sum(self.counts.values()), "n_by_split": json.dumps(self.counts)} | attrs)


TEXT = ("surveys", "xmatch_version", "reference")


def _block(rows, names, opt: ExportOptions):
    """Rows of the query -> (batch of arrays, rows that pass --max-coef-error, text columns)."""
    text = {k: [r[names.index(k)] for r in rows] for k in TEXT}
    b = _rows_to_batch(rows, [n if n not in text else "_" + n for n in names])
    b["surveys"] = np.empty(len(rows), dtype=object)
    for i, v in enumerate(text["surveys"]):  # element by element: np.asarray would stack equal-length lists
        b["surveys"][i] = v
    keep = np.ones(len(rows), bool)
    if opt.max_coef_error is not None:
        flux = g_flux(b["phot_g_mean_flux"], b["phot_g_mean_mag"])
        rel = np.nanmedian(np.concatenate([b["bp_coefficient_errors"], b["rp_coefficient_errors"]],
                                          axis=1), axis=1) / flux
        keep &= rel <= opt.max_coef_error
    return b, keep, text


@dataclass(frozen=True)
class ShardJob:
    options: ExportOptions
    url: str


def export_shard(job: ShardJob, item, topic=None):
    """One source_id range of the training set (a --cluster task): the blocks the serial path would
    read for it. Read-only, so a retry after a lost worker is harmless."""
    from xpmet.db.engine import raw_connect
    index, bounds = item
    sql, params, names = _query(job.options, bounds)
    with raw_connect(job.url) as conn:
        conn.read_only = True
        rows = conn.execute(sql, params).fetchall()
    return index, (_block(rows, names, job.options) if rows else None), len(rows)


def _shard_blocks(conn, session, opt: ExportOptions, shard_rows: int, url: str | None):
    """(n read, batch, keep, text) per shard of ~shard_rows XP rows, in source_id order."""
    from xpmet.distributed import error_line
    from xpmet.predict import chunk_ranges
    job = ShardJob(opt, session.db_url(url))
    ready, nxt = {}, 0
    for _, res, err in session.map(export_shard, enumerate(chunk_ranges(conn, shard_rows)), name="export",
                                   args=(job,), window=2 * max(1, session.n_workers) + 2):
        if err is not None:
            raise err if isinstance(err, XpmetError) else XpmetError(f"export: {error_line(err)}")
        ready[res[0]] = res[1:]
        while nxt in ready:  # completed out of order, written in order
            block, n = ready.pop(nxt)
            nxt += 1
            if block is not None:
                yield n, *block


def export(out_path, options: ExportOptions | None = None, progress: bool = True, cluster: str | None = None,
           shard_rows: int = 50000, url: str | None = None) -> dict:
    """Write the training set to OUT_PATH; returns a summary (rows per split, attributes).

    cluster: a Dask scheduler address or ``local:N`` (xpmet.distributed): shards of ``shard_rows``
    XP rows (source_id ranges) are read and decoded on the workers and written here in source_id
    order, so the file holds exactly what the serial export writes.
    """
    from xpmet.db.engine import raw_connect
    stack, session = contextlib.ExitStack(), None
    if cluster:  # connected first: an unreachable scheduler is the one line printed
        from xpmet.distributed import open_session
        session = stack.enter_context(open_session(cluster))
    opt = options or ExportOptions()
    out = Path(out_path)
    if not out.parent.exists():
        raise XpmetError(f"{out.parent}: directory does not exist")
    _remove_dead_partials(out)
    tmp = out.with_name(f"{_partial_prefix(out)}{os.getpid()}")
    meta_seen = {"xmatch_version": set(), "reference": set()}
    n_cut = 0
    try:
        with stack, raw_connect(url) as conn, h5py.File(tmp, "w") as f:
            exists = conn.execute("SELECT to_regclass('xpmet.training_set') IS NOT NULL").fetchone()[0]
            if not exists:
                raise XpmetError("the database has no xpmet.training_set view; run the migrations "
                                 "(`xpmet db migrate`) and build labels first.")
            # labels built from a crossmatch that is stale or not the newest: exported, but said so
            stale = conn.execute(
                "SELECT CASE WHEN newer_xmatch THEN 'the labels were built from crossmatch ' || "
                "coalesce(labels_xmatch_version, '?') || '; ' || current_xmatch_version || ' is newer (run xpmet labels)' "
                "WHEN xmatch_stale THEN 'crossmatch ' || current_xmatch_version || ': ' || xmatch_stale_reason END "
                "FROM xpmet.label_status").fetchone()
            stale = stale[0] if stale else None
            if opt.correlations is None:
                opt = replace(opt, correlations=_stars_have_correlations(conn, opt))
            sql, params, names = _query(opt)
            total = conn.execute(f"SELECT count(*) FROM ({sql}) q", params).fetchone()[0]
            w = Writer(f, opt.correlations)
            bar = progress_bar(total=total, desc="export", unit="star", enabled=progress)
            for b, keep, text in _blocks(conn, sql, params, names, opt, session, shard_rows, url):
                bar.update(len(keep))
                n_cut += int((~keep).sum())
                for k in meta_seen:
                    meta_seen[k].update(str(v) for v, ok in zip(text[k], keep) if v is not None and ok)
                if not keep.any():
                    continue
                b = {k: v[keep] for k, v in b.items()}
                w.append(b, assign_split(b["source_id"], opt.split, opt.seed))
                fault("export_after_block")
            bar.close()
            if sum(w.counts.values()) == 0:
                raise XpmetError("no star passed the cuts: the training_set view is empty or the filters "
                                 "(--g-max, --max-coef-error, --min-surveys, --require) exclude everyone.")
            _write_noise_sample(conn, f, opt)
            w.finish({"cuts": json.dumps({k: v for k, v in asdict(opt).items() if k not in ("split", "seed")}
                                         | {"rows_cut_by_coef_error": n_cut}),
                      "split": json.dumps(opt.split), "seed": opt.seed,
                      "reference": ",".join(sorted(meta_seen["reference"])),
                      "xmatch_version": ",".join(sorted(meta_seen["xmatch_version"])), "query": sql,
                      "labels_stale": stale or ""})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    fault("export_before_register")
    _register(out, ",".join(sorted(meta_seen["xmatch_version"])), ",".join(sorted(meta_seen["reference"])),
              sum(w.counts.values()), opt, stale, url)
    return {"path": str(out), "n_by_split": w.counts, "rows_cut_by_coef_error": n_cut, "labels_stale": stale}


def _blocks(conn, sql, params, names, opt: ExportOptions, session, shard_rows, url):
    """(batch, keep, text) blocks of the query in source_id order: streamed from a server-side
    cursor here, or read by the Dask workers shard by shard (--limit counted over both alike)."""
    if session is not None:
        left = opt.limit or None
        for n, b, keep, text in _shard_blocks(conn, session, opt, shard_rows, url):
            if left is not None and n > left:  # the serial LIMIT cuts before --max-coef-error does
                b, keep, text = {k: v[:left] for k, v in b.items()}, keep[:left], {k: v[:left] for k, v in text.items()}
            yield b, keep, text
            if left is not None:
                left -= min(n, left)
                if not left:
                    return
        return
    # correlations are 27x the coefficients: smaller blocks keep memory flat (~100 MB)
    fetch = FETCH // 10 if opt.correlations else FETCH
    with conn.cursor(name="xpmet_export") as cur:
        cur.itersize = fetch
        cur.execute(sql, params)
        while rows := cur.fetchmany(fetch):
            yield _block(rows, names, opt)


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-{socket.gethostname()}-"


def _remove_dead_partials(out: Path):
    """Temporary files of earlier exports to OUT from this machine whose process is gone: a killed
    export runs no cleanup. Files of live processes or of other machines are left alone."""
    prefix = _partial_prefix(out)
    for p in out.parent.iterdir():
        pid = p.name[len(prefix):] if p.name.startswith(prefix) else ""
        if pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _register(out: Path, xmatch_version: str, reference: str, n_rows: int, opt: ExportOptions, stale, url=None):
    """One xpmet.training_export row: `xpmet xmatch --keep` keeps the crossmatch runs exports cite."""
    from xpmet.db.engine import raw_connect
    with raw_connect(url) as conn:
        conn.execute("INSERT INTO xpmet.training_export (path, xmatch_version, reference, n_rows, options, "
                     "xpmet_version) VALUES (%s, %s, %s, %s, %s, %s)",
                     (str(out.resolve()), xmatch_version or None, reference or None, n_rows,
                      json.dumps(asdict(opt) | {"labels_stale": stale}, default=str), __version__))


def _write_noise_sample(conn, f: h5py.File, opt: ExportOptions):
    """A deterministic hash-sample of every XP source (labelled or not): errors, G flux and magnitude."""
    n_all = conn.execute("SELECT count(*) FROM xpmet.xp_continuous").fetchone()[0]
    if not opt.noise_sample or not n_all:
        return
    frac = min(1.0, opt.noise_sample / n_all)
    cols = fixed_width_columns(("source_id", "bp_coefficient_errors", "rp_coefficient_errors",
                                "phot_g_mean_flux", "phot_g_mean_mag"))
    sql = (f"SELECT {', '.join(e for e, _ in cols)} FROM xpmet.xp_continuous x "
           "JOIN xpmet.gaia_source g USING (source_id) "
           "WHERE x.bp_coefficient_errors IS NOT NULL AND x.rp_coefficient_errors IS NOT NULL "
           "AND (hashint8(x.source_id # %s) & 1048575) < %s LIMIT %s")
    blocks = [float64_batch(b) for b in select_arrays(conn, sql, (opt.seed, int(frac * 1048576) + 1, opt.noise_sample),
                                                      [c for _, c in cols], max_rows=opt.noise_sample)]
    if not blocks:
        return
    write_noise_group(f, {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]})


def write_noise_group(f: h5py.File, b: dict):
    """/noise: source_id, bp/rp_coefficient_errors (raw), phot_g_mean_flux, phot_g_mean_mag."""
    g = f.create_group("noise")
    g.attrs["description"] = "unlabelled sample of all XP sources: noise model and target G distribution"
    b = dict(b, phot_g_mean_flux=g_flux(b["phot_g_mean_flux"], b["phot_g_mean_mag"]))
    for k in ("source_id", "bp_coefficient_errors", "rp_coefficient_errors", "phot_g_mean_flux", "phot_g_mean_mag"):
        v = np.asarray(b[k])
        g.create_dataset(k, data=v if k == "source_id" else v.astype(np.float32), compression="gzip", shuffle=True)
