"""What a predict run reads, and in which pieces: the input columns a model needs (as fixed-width
binary COPY columns), the SELECT of one chunk, the chunks themselves (source_id ranges cut at HEALPix
level-12 pixel edges, so each is a compact patch of sky) and the checks of a user's --where condition.
"""
from __future__ import annotations

import psycopg

from xpmet.db.models.columns import EXTERNAL_ALIAS, copy_columns, fixed_width_columns
from xpmet.db.models.core import predictions as predictions_table
from xpmet.errors import XpmetError
from xpmet.io.pgcopy import Col


#: source_id // 2**35 is the HEALPix level-12 (nested) pixel of a Gaia source.
LEVEL12_SHIFT = 35

#: --where runs as xpmet_reader under these statement timeouts: the check (on the first
#: WHERE_CHECK_SAMPLE stars) and each chunk's read.
WHERE_CHECK_TIMEOUT_MS = 5_000
WHERE_CHECK_SAMPLE = 100
WHERE_CHUNK_TIMEOUT_MS = 300_000

#: Batch keys of the inference contract (used when a predictor does not declare ``needs``).
DEFAULT_NEEDS = ["source_id", "bp_coefficients", "bp_coefficient_errors", "rp_coefficients",
                 "rp_coefficient_errors", "phot_g_mean_mag", "phot_g_mean_flux", "bp_rp", "parallax"]


#: the predictions table's columns as the COPY writes them (from the table model)
OUTPUTS = copy_columns(predictions_table)


#: what a predictor returns; the rest (model, source, XP load) the pipeline fills in
PREDICTED = [c.name for c in OUTPUTS if c.name not in ("model_id", "source_id", "load_id")]


def input_columns(needs) -> list[tuple[str, Col]]:
    """(SQL expression, Col) per input column (source_id and the XP load first); NULLs become NaN so
    that every row has one width."""
    names = ["source_id", "load_id"] + [n for n in (needs or DEFAULT_NEEDS) if n not in ("source_id", "load_id")]
    try:
        return fixed_width_columns(names)
    except XpmetError as e:
        raise XpmetError(f"the model needs {e}") from None


def chunk_select(inputs, model_id: int, lo: int, hi: int, where: str | None) -> str:
    """The SELECT one chunk streams: the model's input columns of XP stars with lo <= source_id < hi
    that match --where and have no prediction of this model yet (so a resumed run skips them)."""
    # COPY takes no bind parameters: the only values pasted here are integers we made ourselves
    # and the user's own --where expression (checked by check_where; both run as xpmet_reader).
    # Each table gets the range: the planner does not carry it over a join, and a merge join
    # would otherwise walk every gaia_source row and earlier prediction below the chunk.
    rng = lambda t: f"{t}.source_id >= {int(lo)} AND {t}.source_id < {int(hi)}"  # noqa: E731
    cond = rng("x") + (f" AND ({where})" if where else "")
    e = EXTERNAL_ALIAS
    external = (f"LEFT JOIN xpmet.external_photometry {e} ON {e}.source_id = x.source_id AND {rng(e)} "
                if any(expr.startswith(f"coalesce({e}.") for expr, _ in inputs) else "")
    return (f"SELECT {', '.join(e for e, _ in inputs)} FROM xpmet.xp_continuous x "
            f"LEFT JOIN xpmet.gaia_source g ON g.source_id = x.source_id AND {rng('g')} {external}"
            f"WHERE {cond} AND NOT EXISTS (SELECT 1 FROM xpmet.predictions p "
            f"WHERE p.model_id = {int(model_id)} AND {rng('p')} AND p.source_id = x.source_id "
            f"AND p.load_id = x.load_id) ORDER BY x.source_id")


def check_where(conn, where: str | None) -> None:
    """Fail early, with the server's message, when --where is not a valid condition on x and g.

    ``conn`` logs in as xpmet_reader (xpmet.db.readonly.reader_connect): the condition is evaluated
    on the first stars under a short statement timeout, so a function the reader may not call, an
    error at run time or a condition that sleeps fails here, before any work; the transaction is
    rolled back, so nothing it did (set_config, pg_notify) survives.
    """
    if not where:
        return
    if ";" in where:
        raise XpmetError("--where must be one SQL condition (no ';')")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(f"SET LOCAL statement_timeout = {int(WHERE_CHECK_TIMEOUT_MS)}")
            conn.execute(f"SELECT ({where})::boolean FROM (SELECT * FROM xpmet.xp_continuous "
                         f"ORDER BY source_id LIMIT {int(WHERE_CHECK_SAMPLE)}) x "
                         f"LEFT JOIN xpmet.gaia_source g ON g.source_id = x.source_id").fetchall()
    except psycopg.Error as e:
        raise where_error(where, e, WHERE_CHECK_TIMEOUT_MS, f"on {WHERE_CHECK_SAMPLE} stars") from None


def where_error(where: str, e: psycopg.Error, timeout_ms: int, what: str) -> XpmetError:
    """The one-line refusal of a --where the server would not run."""
    msg = (e.diag.message_primary or str(e)).strip().splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, psycopg.errors.QueryCanceled):
        return XpmetError(f"--where {where!r} took longer than {timeout_ms / 1000:g} s {what} and was stopped")
    if isinstance(e, psycopg.errors.InsufficientPrivilege):
        return XpmetError(f"--where {where!r} was refused: it runs as the read-only role, which may read the "
                          f"published tables and call side-effect-free functions only ({msg})")
    return XpmetError(f"--where {where!r} is not a valid condition on x (xp_continuous) and "
                      f"g (gaia_source): {msg}")


def chunk_ranges(conn, rows_per_chunk: int):
    """Yield [lo, hi) source_id ranges of about rows_per_chunk XP rows, cut at level-12 pixel edges.

    Boundaries come lazily from the primary key (an index-only scan of one chunk each), so the
    first chunk starts at once even on 219 million rows.
    """
    lo = conn.execute("SELECT min(source_id) FROM xpmet.xp_continuous").fetchone()[0]
    if lo is None:
        return
    while True:
        nxt = conn.execute("SELECT source_id FROM xpmet.xp_continuous WHERE source_id >= %s "
                           "ORDER BY source_id OFFSET %s LIMIT 1", (lo, rows_per_chunk)).fetchone()
        if nxt is None:
            yield lo, 2 ** 63 - 1
            return
        hi = (nxt[0] >> LEVEL12_SHIFT) << LEVEL12_SHIFT  # start of the pixel that holds the next row
        if hi <= lo:  # one dense pixel holds the whole chunk: cut inside it
            hi = nxt[0]
        yield lo, hi
        lo = hi
