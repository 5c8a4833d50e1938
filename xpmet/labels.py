"""Homogenised survey labels: choose the reference scale, fit the calibration, refresh the views.

xpmet.calibration fits every survey's scale jointly over the overlap network (table
survey_calibration, shown by the view survey_zero_point); the SQL views apply it
(db/sql/calibration_0009.sql): calibrated_measurement -> labels (one row per Gaia source) ->
training_set (what the export reads). This module sets the one row of xpmet.label_setting, fits,
and refreshes the materialized view, in one transaction.

    import xpmet.labels
    xpmet.labels.refresh(reference="gbs", fallback="apogee")
    # then: SELECT * FROM xpmet.labels / xpmet.survey_zero_point / xpmet.training_set
"""
from __future__ import annotations

import sqlalchemy as sa

from xpmet.db.engine import connect
from xpmet.errors import XpmetError
from xpmet.faults import fault
from xpmet.flags import LABEL_BITS  # noqa: F401  (re-exported: xpmet.labels.LABEL_BITS)

#: Documented cuts of xpmet.training_set (see db/sql/labels.sql).
TRAINING_CUTS = ("feh IS NOT NULL AND feh_err <= label_setting.max_feh_err",
                 "label_flags has none of feh_discordant, ambiguous_match, duplicate_claim",
                 "no contributing survey whose [Fe/H] is uncalibrated (survey_zero_point)",
                 "both XP bands present, all 110 coefficient errors finite and > 0",
                 "XP S/N = sqrt(sum over the 110 coefficients of (coef/err)^2) >= label_setting.min_xp_snr",
                 "phot_g_mean_mag known")
SETTINGS = ("reference", "fallback", "min_overlap", "min_trend_overlap", "clip", "max_chi2_dof",
            "max_feh_err", "min_xp_snr")


def label_settings(engine=None) -> dict:
    with (engine or connect()).begin() as c:
        c.execute(sa.text("INSERT INTO xpmet.label_setting (id) VALUES (1) ON CONFLICT DO NOTHING"))
        row = c.execute(sa.text("SELECT * FROM xpmet.label_setting WHERE id = 1")).mappings().one()
    return {k: row[k] for k in SETTINGS}


#: a refresh waits at most this long for a lock (a reader it could not clear out of the way)
REFRESH_LOCK_TIMEOUT = "60s"
# REFRESH MATERIALIZED VIEW needs an exclusive lock, so one open reader transaction on the label views
# would hold every refresh (and then every reader queued behind it) hostage: read-only sessions
# holding locks on them are ended first, where this role may signal them.
_CLEAR_READERS = """
SELECT count(pg_terminate_backend(a.pid)) FROM pg_stat_activity a
WHERE a.usename = %(reader)s AND a.pid <> pg_backend_pid()
  AND a.pid IN (SELECT pid FROM pg_locks
                WHERE relation IN ('xpmet.labels'::regclass, 'xpmet.survey_zero_point'::regclass))
  AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'))"""


def _prepare_refresh(conn) -> None:
    """In the refresh's transaction (a psycopg connection): bound the lock wait, clear readers."""
    from xpmet.db.readonly import READER
    conn.execute(f"SET LOCAL lock_timeout = '{REFRESH_LOCK_TIMEOUT}'")
    conn.execute(_CLEAR_READERS, {"reader": READER})


def _refresh(conn) -> None:
    """Fit the calibration and refresh the label views in the caller's psycopg transaction."""
    from xpmet import calibration
    _prepare_refresh(conn)
    calibration.refresh_on(conn)
    conn.execute("SELECT xpmet.refresh_labels()")


def refresh(reference: str | None = None, engine=None, **options) -> dict:
    """Set the reference scale (a survey name) and other options, then recompute the label views.

    Options: fallback (survey name or ""), min_overlap, min_trend_overlap, clip, max_chi2_dof,
    max_feh_err, min_xp_snr. Unset options keep their stored values. Returns a summary.
    """
    engine = engine or connect()
    bad = set(options) - set(SETTINGS)
    if bad:
        raise XpmetError(f"unknown label option(s) {sorted(bad)}; known: {', '.join(SETTINGS)}")
    changes = {k: v for k, v in {"reference": reference, **options}.items() if v is not None}
    if changes.get("fallback") == "":
        changes["fallback"] = None
    from xpmet.xmatch import LOCK_KEY
    with engine.begin() as c:
        # after a running `xpmet xmatch` (it refreshes the labels itself before it commits)
        c.execute(sa.text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": LOCK_KEY[0], "b": LOCK_KEY[1]})
        c.execute(sa.text("SET LOCAL jit = off"))
        # the settings row may have been truncated away: recreate it with its defaults
        c.execute(sa.text("INSERT INTO xpmet.label_setting (id) VALUES (1) ON CONFLICT DO NOTHING"))
        names = set(c.execute(sa.text("SELECT name FROM xpmet.survey")).scalars())
        for key in ("reference", "fallback"):
            v = changes.get(key)
            if v is not None and v not in names:
                raise XpmetError(f"{key} survey {v!r} is not loaded; loaded surveys: {', '.join(sorted(names)) or 'none'}")
        if changes:
            sets = ", ".join(f"{k} = :{k}" for k in changes)
            c.execute(sa.text(f"UPDATE xpmet.label_setting SET {sets}, updated_at = now() WHERE id = 1"), changes)
        summary = refresh_on(c.connection.driver_connection)  # the same transaction, through psycopg
        fault("labels_before_commit")
    return summary


def refresh_on(conn) -> dict:
    """Refresh the label views inside the caller's open psycopg transaction (run_xmatch: the labels
    then commit together with the crossmatch they are built from); returns refresh()'s summary."""
    conn.execute("INSERT INTO xpmet.label_setting (id) VALUES (1) ON CONFLICT DO NOTHING")
    _refresh(conn)
    ref = conn.execute("SELECT reference FROM xpmet.label_setting WHERE id = 1").fetchone()[0]
    n_labels = conn.execute("SELECT count(*) FROM xpmet.labels").fetchone()[0]
    status = dict(conn.execute("SELECT status, count(*) FROM xpmet.survey_zero_point GROUP BY status").fetchall())
    if not conn.execute("SELECT 1 FROM xpmet.survey WHERE name = %s", (ref,)).fetchone():
        status["warning"] = f"reference {ref!r} is not loaded: every survey is uncalibrated"
    return {"reference": ref, "n_labels": n_labels, "zero_points": status}


def status(engine=None) -> dict:
    """xpmet.label_status: the crossmatch version the labels were built from, whether a newer run
    exists (newer_xmatch) or that run is stale (xmatch_stale, xmatch_stale_reason)."""
    with (engine or connect()).connect() as c:
        return dict(c.execute(sa.text("SELECT * FROM xpmet.label_status")).mappings().one())


def zero_points(engine=None) -> list[dict]:
    """The rows of xpmet.survey_zero_point (survey, label, status, zero_point, error, trend, N, and
    the fitted model: knots, offsets, offset_errs, err_scale, error_floor_fitted, ...)."""
    with (engine or connect()).connect() as c:
        return [dict(r) for r in c.execute(sa.text(
            "SELECT * FROM xpmet.survey_zero_point ORDER BY survey, label")).mappings()]
