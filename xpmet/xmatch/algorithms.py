"""Crossmatch algorithms: how candidate pairs are found and measured, and which one wins.

An algorithm is a small class chosen by name (``XmatchParams.epoch``, ``xpmet xmatch --epoch``):

- ``propagate`` (default): Gaia positions moved with their proper motions to each survey row's
  epoch; sources without proper motion compared at their Gaia position within ``nopm_radius``;
  sources moving faster than ``pm_cap`` searched from the Gaia side;
- ``gaia``: every pair compared at the Gaia positions (no propagation), as the original research
  pipeline's STILTS match did.

Both share the evidence rules and the best-neighbour ranking (:meth:`CrossmatchAlgorithm.rows_sql`):
a declared DR3/EDR3 id within ``id_radius`` first, positions second, a DR2 id only to break ties.
The run itself (snapshot, lock, worker connection, bookkeeping) is :mod:`xpmet.xmatch.run`'s job.

q3c's own proper-motion join (``q3c_join_pm``) was measured against the hand-written propagation
on 500k Gaia x 100k survey rows: 10.6 s against 2.8 s (it probes from the proper-motion side,
which is Gaia), so the propagation here stays.
"""
from __future__ import annotations

from xpmet.errors import XpmetError
from xpmet.flags import XMATCH_BITS

SURVEY_COLS = "s.star_id, s.survey_id, s.ra, s.dec, s.epoch, s.gaia_source_id, s.gaia_release"
#: Parts of the search: every survey row on one connection, or the rows split over two (SQL on s).
#: Each part runs every arm for its rows (the Gaia-side one too, so each ranks its own rows).
SHARES = {"all": "true", "main": "s.star_id %% 2 = 0", "worker": "s.star_id %% 2 = 1"}
PARTS = tuple(SHARES)


def within_sql(a: str, b: str, radius: str) -> str:
    """True when q3c_join(a.ra, a.dec, b.ra, b.dec, radius) holds: its distance test, the same
    expression (q3c's index ranges cover the whole circle), without the 8 q3c_nearby_it calls."""
    return (f"coalesce(q3c_sindist({a}.ra, {a}.dec, {b}.ra, {b}.dec) < pow(sin(radians({radius}) / 2), 2), "
            "false)")


def _bit(name):
    return 1 << XMATCH_BITS[name]


class CrossmatchAlgorithm:
    """A matching policy: which (survey row, Gaia source) pairs are candidates and how far apart they are."""
    name = ""
    description = ""

    def validate(self, params) -> None:
        """Refuse parameters this algorithm cannot honour (XpmetError)."""

    def separation_sql(self) -> tuple[str, str]:
        """SQL of the separation (arcsec) of survey row s and Gaia source g, and of "g has no proper motion"."""
        raise NotImplementedError

    def search_radius_sql(self) -> str:
        """SQL of the radius (degrees) of the q3c probe around survey row s (radii in p)."""
        raise NotImplementedError

    def extra_arms(self, cols: str, rows: str) -> list[str]:
        """Further candidate SELECTs, e.g. from the Gaia side, for the survey rows s that ``rows``
        (SQL: "AND ...") keeps; each leaves out the pairs the survey-side probe finds
        (:meth:`found_by_probe_sql`)."""
        return []

    def found_by_extra_sql(self) -> list[str]:
        """Per extra arm, SQL that is true exactly for the pairs (s, g, p) that arm finds."""
        return []

    def found_by_probe_sql(self) -> str:
        """True exactly for the pairs (s, g, p) the survey-side probe finds (:func:`within_sql`)."""
        return within_sql("s", "g", self.search_radius_sql())

    def pair_columns(self) -> str:
        """Select list of one candidate pair (survey row s, Gaia source g, radii p): separation and id evidence."""
        sep, nopm = self.separation_sql()
        return f"""s.star_id, s.survey_id, g.source_id, s.ra IS NULL AS no_position, {sep} AS sep, {nopm} AS no_pm,
               coalesce(g.source_id = s.gaia_source_id AND s.gaia_release IN ('DR3', 'EDR3'), false) AS declared,
               coalesce(g.source_id = s.gaia_source_id AND s.gaia_release = 'DR2', false) AS declared_dr2,
               p.radius, p.nopm_radius, p.id_radius"""

    def candidates_sql(self, part: str = "all") -> str:
        """SELECT of the candidate (survey row, Gaia source) pairs with their exact separations.

        One pass: q3c index probes and declared ids find the candidates, and each arm computes the
        separation at the row's epoch from the columns it already holds (no second join of the pairs
        with survey_star or gaia_source). Each pair comes once: an arm leaves out what the arms before
        it find (so there is no duplicate to sort away). ``part`` splits the survey rows over two
        connections (:data:`SHARES`), each with all arms; "all" is every row. Parameters %(pm_cap)s
        %(max_r)s %(max_dt)s and the per-survey arrays %(sid)s %(radius)s %(nopm_radius)s %(id_radius)s
        (plain parameters, so a second connection can run it too).
        """
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}")
        cols = self.pair_columns()
        probe_rows = f"AND {SHARES[part]}"
        search = self.search_radius_sql()
        # Each q3c probe is a LATERAL subquery that OFFSET 0 keeps from being flattened: its only access
        # paths are the q3c index and a (disabled) sequential scan, so the plan is one index probe per
        # outer row whatever the statistics say. As a plain join, a table without statistics yet (just
        # loaded, or analysed in a transaction the other connection cannot see) made the planner scan
        # all survey rows per fast mover instead: 78 M q3c_sindist calls, 30 s of a 31 s first run.
        arms = ["SELECT * FROM probed", *self.extra_arms(cols, probe_rows)]
        # declared ids the probes did not find: an anti-join with the probes' pairs first, so only
        # those few cost a primary-key probe into gaia_source (a plain join hashed all of it)
        extra_found = " OR ".join(self.found_by_extra_sql()) or "false"
        arms.append(f"""
          SELECT {cols} FROM (
            SELECT {SURVEY_COLS} FROM xpmet.survey_star s
            WHERE s.gaia_source_id IS NOT NULL {probe_rows}
              AND NOT EXISTS (SELECT 1 FROM probed f WHERE f.star_id = s.star_id AND f.source_id = s.gaia_source_id)
            OFFSET 0) s
          JOIN p USING (survey_id)
          CROSS JOIN LATERAL (
            SELECT g.source_id, g.ra, g.dec, g.pmra, g.pmdec, g.ref_epoch FROM xpmet.gaia_source g
            WHERE g.source_id = s.gaia_source_id OFFSET 0) g
          WHERE NOT ({extra_found})""")
        union = "\n      UNION ALL".join(arms)
        return f"""
        WITH p AS (SELECT * FROM unnest(%(sid)s::smallint[], %(radius)s::float8[], %(nopm_radius)s::float8[],
                                        %(id_radius)s::float8[]) AS p(survey_id, radius, nopm_radius, id_radius)),
        probe AS MATERIALIZED (  -- the search radius must be known before the index probe into gaia_source
          SELECT {SURVEY_COLS}, {search} AS r FROM xpmet.survey_star s JOIN p USING (survey_id)
          WHERE s.ra IS NOT NULL AND s.dec IS NOT NULL {probe_rows}
        ),
        probed AS MATERIALIZED (
          SELECT {cols} FROM probe s
          JOIN p USING (survey_id)
          CROSS JOIN LATERAL (
            SELECT g.source_id, g.ra, g.dec, g.pmra, g.pmdec, g.ref_epoch FROM xpmet.gaia_source g
            WHERE q3c_join(s.ra, s.dec, g.ra, g.dec, s.r)
            -- no filter on g here: any condition on gaia_source makes the planner drop the q3c index
            -- (its cost estimates are huge)
            OFFSET 0) g
        ),
        cand AS ({union}
        )
        SELECT star_id, survey_id, source_id, no_position, sep, no_pm, declared, declared_dr2,
               sep <= CASE WHEN no_pm THEN nopm_radius ELSE radius END AS within,
               declared AND (no_position OR sep <= id_radius) AS id_ok
        FROM cand"""

    def rows_sql(self, part: str = "all") -> str:
        """SELECT of the xmatch rows (all columns, in the table's order; parameter %(run_id)s) of the
        survey rows of ``part`` (see :meth:`candidates_sql`): the ranking of their candidates.
        ``duplicate_claim`` needs every part's rows: :meth:`claims_sql` sets it afterwards."""
        b = _bit
        rows = f"WHERE {SHARES[part]}"
        return f"""
        WITH pairs AS MATERIALIZED ({self.candidates_sql(part)}
        ),
        ranked AS (  -- each pair is once in pairs (candidates_sql)
          SELECT *, row_number() OVER (PARTITION BY star_id
                                       ORDER BY (within OR id_ok) DESC, id_ok DESC, (declared_dr2 AND within) DESC,
                                                sep, source_id) AS rk
          FROM pairs
        ),
        best AS (
          SELECT star_id,
                 max(source_id) FILTER (WHERE rk = 1 AND (within OR id_ok)) AS source_id,
                 max(sep) FILTER (WHERE rk = 1 AND (within OR id_ok)) AS separation,
                 bool_or(rk = 1 AND id_ok) AS by_id,
                 bool_or(rk = 1 AND within AND NOT id_ok) AS by_position,
                 bool_or(rk = 1 AND declared_dr2 AND within) AS by_dr2,
                 bool_or(rk = 1 AND no_pm AND (within OR id_ok)) AS no_pm,
                 count(*) FILTER (WHERE within) AS n_candidates,
                 min(sep) FILTER (WHERE within AND rk > 1) AS second_separation,
                 min(sep) FILTER (WHERE within) AS nearest,
                 min(sep) FILTER (WHERE declared) AS id_separation,
                 bool_or(declared AND NOT id_ok) AS id_rejected
          FROM ranked GROUP BY star_id
        ),
        rows AS (
          SELECT s.star_id, s.survey_id, b.source_id, b.separation, coalesce(b.n_candidates, 0) AS n_candidates,
                 b.second_separation, b.id_separation,
                 CASE WHEN b.source_id IS NULL THEN 'none'
                      WHEN b.by_id AND b.separation <= b.nearest AND b.n_candidates > 0 THEN 'both'
                      WHEN b.by_id THEN 'id'
                      WHEN b.by_dr2 THEN 'both'
                      ELSE 'position' END AS method,
                 coalesce(b.by_position AND b.n_candidates > 1, false) AS ambiguous,
                 (CASE WHEN coalesce(b.id_rejected, false) THEN {b('id_rejected')} ELSE 0 END
                  | CASE WHEN s.gaia_source_id IS NOT NULL AND s.gaia_release IN ('DR3', 'EDR3')
                              AND b.id_separation IS NULL THEN {b('id_not_found')} ELSE 0 END
                  | CASE WHEN coalesce(b.no_pm, false) THEN {b('no_pm')} ELSE 0 END
                  | CASE WHEN coalesce(b.by_dr2, false) THEN {b('dr2_id')} ELSE 0 END
                  | CASE WHEN b.by_id AND b.separation > b.nearest THEN {b('id_not_nearest')} ELSE 0 END
                  | CASE WHEN s.ra IS NULL OR s.dec IS NULL THEN {b('no_position')} ELSE 0 END) AS flags
          FROM xpmet.survey_star s
          LEFT JOIN best b USING (star_id)
          {rows}
        )
        -- typed as the table's columns: the worker's rows arrive by binary COPY
        SELECT %(run_id)s::integer AS run_id, star_id, survey_id, source_id, method, separation,
               n_candidates::smallint, second_separation, id_separation, ambiguous, false AS duplicate_claim,
               (flags | CASE WHEN ambiguous THEN {b('ambiguous')} ELSE 0 END)::integer AS flags
        FROM rows
        """

    @staticmethod
    def claims_sql(table: str) -> str:
        """UPDATE of ``table``'s rows whose Gaia source another row of the same survey matched too
        (a hash aggregate over the run's rows; few rows change)."""
        return f"""
        UPDATE {table} x SET duplicate_claim = true, flags = x.flags | {_bit('duplicate_claim')}
        FROM (SELECT survey_id, source_id FROM {table} WHERE source_id IS NOT NULL
              GROUP BY survey_id, source_id HAVING count(*) > 1) c
        WHERE x.survey_id = c.survey_id AND x.source_id = c.source_id"""


class PropagatedPositions(CrossmatchAlgorithm):
    name = "propagate"
    description = "Gaia positions moved with their proper motions to each survey row's epoch"

    def separation_sql(self):
        # position of the Gaia source at the survey row's epoch (linear in ra*cos dec, dec; fine away from poles)
        dt = "(coalesce(s.epoch, 2016.0) - coalesce(g.ref_epoch, 2016.0))"
        return (f"CASE WHEN g.pmra IS NULL OR g.pmdec IS NULL THEN q3c_dist(g.ra, g.dec, s.ra, s.dec) "
                f"ELSE q3c_dist(g.ra + g.pmra * {dt} / (3600000.0 * cos(radians(g.dec))), "
                f"g.dec + g.pmdec * {dt} / 3600000.0, s.ra, s.dec) END * 3600.0",
                "(g.pmra IS NULL OR g.pmdec IS NULL)")

    def search_radius_sql(self):
        return "(p.radius + %(pm_cap)s * abs(coalesce(s.epoch, 2016.0) - 2016.0) / 1000.0) / 3600.0"

    #: Gaia sources moving faster than pm_cap, and those without proper motion (matched within the
    #: wider nopm_radius), are few: they probe survey_star from the Gaia side instead, this far (deg)
    GAIA_SIDE = "g.pmra IS NULL OR g.pmdec IS NULL OR g.pmra * g.pmra + g.pmdec * g.pmdec > %(pm_cap)s ^ 2"
    GAIA_SIDE_RADIUS = ("CASE WHEN g.pmra IS NULL OR g.pmdec IS NULL THEN %(max_r)s ELSE %(max_r)s + "
                        "sqrt(g.pmra * g.pmra + g.pmdec * g.pmdec) * %(max_dt)s / 1000.0 END / 3600.0")

    def extra_arms(self, cols, rows):
        # a LATERAL subquery kept apart by OFFSET 0: see the positional arm
        return [f"""
          SELECT {cols} FROM xpmet.gaia_source g
          CROSS JOIN LATERAL (
            SELECT {SURVEY_COLS} FROM xpmet.survey_star s
            WHERE q3c_join(g.ra, g.dec, s.ra, s.dec, {self.GAIA_SIDE_RADIUS}) {rows}
            OFFSET 0) s
          JOIN p USING (survey_id)
          WHERE ({self.GAIA_SIDE}) AND NOT {self.found_by_probe_sql()}"""]

    def found_by_extra_sql(self):
        return [f"(({self.GAIA_SIDE}) AND {within_sql('g', 's', self.GAIA_SIDE_RADIUS)})"]


class GaiaEpochPositions(CrossmatchAlgorithm):
    name = "gaia"
    description = "every pair compared at the Gaia positions (epoch 2016.0), no propagation"

    def separation_sql(self):
        return "q3c_dist(g.ra, g.dec, s.ra, s.dec) * 3600.0", "false"

    def search_radius_sql(self):
        return "p.radius / 3600.0"


#: the algorithms by name
ALGORITHMS = {cls.name: cls for cls in (PropagatedPositions, GaiaEpochPositions)}


def algorithm(name: str) -> CrossmatchAlgorithm:
    """The crossmatch algorithm called ``name`` (one of ALGORITHMS)."""
    try:
        return ALGORITHMS[name]()
    except KeyError:
        raise XpmetError(f"no crossmatch algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}") from None
