-- Integrity bookkeeping of migration 0005: staleness of crossmatch runs and labels, survey ids
-- from a sequence, error floors from each load's own descriptor. Undone by integrity_drop.sql.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)

-- Loads whose rows the crossmatch reads: gaia_source and survey files (the tests' own gaia
-- loads are kind 'test:gaia_source').
CREATE FUNCTION xpmet.feeds_xmatch(kind text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT starts_with(kind, 'survey:') OR kind = 'gaia_source' OR right(kind, 12) = chr(58) || 'gaia_source'
$$;

-- Why a crossmatch run that read the loads run_loads no longer matches the tables, or NULL when
-- it still does: a load it read was replaced since, or a load it did not see is now done
-- (committed during or after the run). NULL for runs made before 0005 (nothing recorded).
CREATE FUNCTION xpmet.xmatch_stale_reason(run_loads integer[]) RETURNS text
LANGUAGE sql STABLE AS $$
    WITH changed AS (
        SELECT l.kind, count(*) FILTER (WHERE l.status <> 'done') AS n_replaced,
               count(*) FILTER (WHERE l.status = 'done') AS n_new
        FROM xpmet.etl_load l
        WHERE run_loads IS NOT NULL AND xpmet.feeds_xmatch(l.kind)
          AND ((l.status = 'done' AND NOT l.load_id = ANY(run_loads))
               OR (l.status <> 'done' AND l.load_id = ANY(run_loads)))
        GROUP BY l.kind)
    SELECT string_agg(kind || ' ' || concat_ws(' and ',
                      CASE WHEN n_replaced > 0 THEN n_replaced || ' file(s) replaced' END,
                      CASE WHEN n_new > 0 THEN n_new || ' file(s) loaded' END), ', ' ORDER BY kind)
           || ' since this crossmatch; run xpmet xmatch'
    FROM changed
$$;

CREATE VIEW xpmet.xmatch_run_status AS
SELECT r.run_id, r.version, r.status, r.is_current, r.started_at, r.n_rows, r.n_matched,
       cardinality(r.loads) AS n_loads, s.reason IS NOT NULL AS stale, s.reason AS stale_reason
FROM xpmet.xmatch_run r CROSS JOIN LATERAL (SELECT xpmet.xmatch_stale_reason(r.loads) AS reason) s;
COMMENT ON VIEW xpmet.xmatch_run_status IS
  'Crossmatch runs with stale/stale_reason: a file they read was replaced, or a newer file was loaded';

-- One row: which crossmatch the label views were built from, whether a newer one exists, and
-- whether that crossmatch is itself stale.
CREATE VIEW xpmet.label_status AS
SELECT ls.labels_xmatch_version, ls.labels_refreshed_at, r.version AS current_xmatch_version,
       ls.labels_xmatch_version IS DISTINCT FROM r.version AS newer_xmatch,
       coalesce(r.stale, false) AS xmatch_stale, r.stale_reason AS xmatch_stale_reason,
       (ls.labels_xmatch_version IS DISTINCT FROM r.version OR coalesce(r.stale, false)) AS stale,
       ls.reference
FROM xpmet.label_setting ls
LEFT JOIN xpmet.xmatch_run_status r ON r.is_current
WHERE ls.id = 1;
COMMENT ON VIEW xpmet.label_status IS
  'The crossmatch version the labels were built from; stale when a newer run exists or that run is stale';

-- Per model: predictions whose XP spectrum changed since (another load, by --replace of the file or
-- by another file) or is gone; xpmet predict re-predicts exactly those. A full pass over the table.
CREATE VIEW xpmet.prediction_status AS
SELECT p.model_id, count(*) AS n_predictions,
       count(*) FILTER (WHERE x.load_id IS DISTINCT FROM p.load_id) AS n_stale
FROM xpmet.predictions p LEFT JOIN xpmet.xp_continuous x ON x.source_id = p.source_id
GROUP BY p.model_id;
COMMENT ON VIEW xpmet.prediction_status IS
  'Per model: predictions, and those made from an XP spectrum that was replaced or removed since (n_stale)';

-- Recompute the materialized label views, and remember which crossmatch they were built from.
CREATE OR REPLACE FUNCTION xpmet.refresh_labels() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  SET LOCAL jit = off;
  -- The views chain CTEs the planner has no statistics for; it then expects a handful of rows and
  -- picks nested loops that go quadratic (seconds at 10^4 rows, hours at 10^6). Hash joins throughout.
  SET LOCAL enable_nestloop = off;
  -- fresh statistics: right after a load the planner would otherwise expect 1 row and nest loops
  ANALYZE xpmet.survey_star;
  ANALYZE xpmet.xmatch;
  REFRESH MATERIALIZED VIEW xpmet.survey_zero_point;
  REFRESH MATERIALIZED VIEW xpmet.labels;
  INSERT INTO xpmet.label_setting (id) VALUES (1) ON CONFLICT DO NOTHING;
  UPDATE xpmet.label_setting
     SET labels_xmatch_version = (SELECT version FROM xpmet.xmatch_run WHERE is_current),
         labels_refreshed_at = now()
   WHERE id = 1;
END $$;

-- Error floors come from the descriptor of each row's own load (a later load of the survey with
-- another descriptor no longer changes earlier rows); loads from before 0005 fall back on the
-- survey's descriptor. Same columns as in labels.sql.
CREATE OR REPLACE VIEW xpmet.survey_measurement AS
SELECT x.source_id, ss.survey_id, sv.name AS survey, ss.star_id, m.label,
       m.value::float8 AS value, m.err::float8 AS err, m.error_floor,
       x.ambiguous, x.duplicate_claim, x.xmatch_version
FROM xpmet.survey_star ss
JOIN xpmet.xmatch_current x ON x.star_id = ss.star_id
-- OFFSET 0: read the floors once per survey and load, not the descriptor per row (see labels.sql)
JOIN (SELECT survey_id, name, (descriptor -> 'error_floor' ->> 'teff')::float8 AS floor_teff,
             (descriptor -> 'error_floor' ->> 'logg')::float8 AS floor_logg,
             (descriptor -> 'error_floor' ->> 'feh')::float8 AS floor_feh,
             (descriptor -> 'error_floor' ->> 'alpha_fe')::float8 AS floor_alpha_fe
      FROM xpmet.survey OFFSET 0) sv ON sv.survey_id = ss.survey_id
LEFT JOIN (SELECT load_id, (descriptor -> 'error_floor' ->> 'teff')::float8 AS floor_teff,
                  (descriptor -> 'error_floor' ->> 'logg')::float8 AS floor_logg,
                  (descriptor -> 'error_floor' ->> 'feh')::float8 AS floor_feh,
                  (descriptor -> 'error_floor' ->> 'alpha_fe')::float8 AS floor_alpha_fe
           FROM xpmet.etl_load WHERE descriptor IS NOT NULL OFFSET 0) ld ON ld.load_id = ss.load_id
CROSS JOIN LATERAL (VALUES
    ('teff', ss.teff, ss.teff_err, {{bit:survey_quality.teff_flagged}},
     coalesce(CASE WHEN ld.load_id IS NULL THEN sv.floor_teff ELSE ld.floor_teff END, 50.0::float8)),
    ('logg', ss.logg, ss.logg_err, {{bit:survey_quality.logg_flagged}},
     coalesce(CASE WHEN ld.load_id IS NULL THEN sv.floor_logg ELSE ld.floor_logg END, 0.1::float8)),
    ('feh', ss.feh, ss.feh_err, {{bit:survey_quality.feh_flagged}},
     coalesce(CASE WHEN ld.load_id IS NULL THEN sv.floor_feh ELSE ld.floor_feh END, 0.05::float8)),
    ('alpha_fe', ss.alpha_fe, ss.alpha_fe_err, {{bit:survey_quality.alpha_fe_flagged}},
     coalesce(CASE WHEN ld.load_id IS NULL THEN sv.floor_alpha_fe ELSE ld.floor_alpha_fe END, 0.05::float8)))
     AS m(label, value, err, flag_bit, error_floor)
WHERE x.source_id IS NOT NULL AND ss.quality_ok AND m.value IS NOT NULL
  AND (ss.quality_flags >> m.flag_bit) & 1 = 0;

-- survey_id is a smallserial since 0001, but the loader used to insert max + 1 itself (two first
-- loads at once collided): it now takes nextval, so move the sequence past the ids given so far.
SELECT setval(pg_get_serial_sequence('xpmet.survey', 'survey_id'),
              coalesce((SELECT max(survey_id) FROM xpmet.survey), 0) + 1, false);

-- Existing predictions were made from the XP rows now stored (nothing else was possible before).
UPDATE xpmet.predictions p SET load_id = x.load_id FROM xpmet.xp_continuous x WHERE x.source_id = p.source_id;
