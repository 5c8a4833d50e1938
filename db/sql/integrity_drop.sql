-- Undoes integrity.sql (migration 0005 downgrade): 0002's survey_measurement and refresh_labels again.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)
DROP VIEW IF EXISTS xpmet.prediction_status;
DROP VIEW IF EXISTS xpmet.label_status;
DROP VIEW IF EXISTS xpmet.xmatch_run_status;
DROP FUNCTION IF EXISTS xpmet.xmatch_stale_reason(integer[]);
DROP FUNCTION IF EXISTS xpmet.feeds_xmatch(text);
CREATE OR REPLACE VIEW xpmet.survey_measurement AS
SELECT x.source_id, ss.survey_id, sv.name AS survey, ss.star_id, m.label,
       m.value::float8 AS value, m.err::float8 AS err, m.error_floor,
       x.ambiguous, x.duplicate_claim, x.xmatch_version
FROM xpmet.survey_star ss
JOIN xpmet.xmatch_current x ON x.star_id = ss.star_id
-- the floors are read from the descriptor here, once per survey: referring to sv.descriptor in the
-- select list would carry the whole descriptor (~1.5 kB) through every join and sort of every
-- measurement (gigabytes of sort spill at 10^6 rows). OFFSET 0 keeps the planner from pulling the
-- subquery up and doing exactly that.
JOIN (SELECT survey_id, name, (descriptor -> 'error_floor' ->> 'teff')::float8 AS floor_teff,
             (descriptor -> 'error_floor' ->> 'logg')::float8 AS floor_logg,
             (descriptor -> 'error_floor' ->> 'feh')::float8 AS floor_feh,
             (descriptor -> 'error_floor' ->> 'alpha_fe')::float8 AS floor_alpha_fe
      FROM xpmet.survey OFFSET 0) sv ON sv.survey_id = ss.survey_id
CROSS JOIN LATERAL (VALUES ('teff', ss.teff, ss.teff_err, {{bit:survey_quality.teff_flagged}}, coalesce(sv.floor_teff, 50.0::float8)),
                           ('logg', ss.logg, ss.logg_err, {{bit:survey_quality.logg_flagged}}, coalesce(sv.floor_logg, 0.1::float8)),
                           ('feh', ss.feh, ss.feh_err, {{bit:survey_quality.feh_flagged}}, coalesce(sv.floor_feh, 0.05::float8)),
                           ('alpha_fe', ss.alpha_fe, ss.alpha_fe_err, {{bit:survey_quality.alpha_fe_flagged}}, coalesce(sv.floor_alpha_fe, 0.05::float8)))
     AS m(label, value, err, flag_bit, error_floor)
WHERE x.source_id IS NOT NULL AND ss.quality_ok AND m.value IS NOT NULL
  AND (ss.quality_flags >> m.flag_bit) & 1 = 0;

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
END $$;
