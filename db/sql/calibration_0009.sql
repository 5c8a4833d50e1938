-- Label views of migration 0009: the joint calibration (table xpmet.survey_calibration, fitted by
-- xpmet.calibration over the whole overlap network) replaces the reference-only zero points.
-- Chain: survey_source_label -> [xpmet.calibration, Python] -> survey_calibration -> survey_zero_point
--        -> calibrated_measurement -> label_measurement -> labels (materialized) -> training_set.
-- Undone by calibration_0009_drop.sql (which restores the 0002 views from label_views_0002.sql).

DROP VIEW xpmet.training_set;
DROP MATERIALIZED VIEW xpmet.labels;
DROP VIEW xpmet.label_measurement;
DROP VIEW xpmet.calibrated_measurement;
DROP MATERIALIZED VIEW xpmet.survey_zero_point;

-- A survey value y put on the true scale: the inverse of y = x + offset(x), offset piecewise linear
-- through (knots, offsets) and straight on beyond the end knots. Returns {x, dx/dy, systematic
-- error of x}; the systematic error is |1 - t| err_j + |t| err_j+1 (t: the position between the
-- knots, < 0 or > 1 beyond the end knots), an upper bound whatever the two offsets' correlation,
-- over the local slope. Pure: no table, no side effect.
CREATE FUNCTION xpmet.calibrate_value(y float8, knots float8[], offsets float8[], offset_errs float8[])
RETURNS float8[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  n int := coalesce(cardinality(knots), 0);
  j int := 1;
  o0 float8; o1 float8; t float8; dydx float8;
BEGIN
  IF y IS NULL THEN RETURN NULL; END IF;
  IF n = 0 THEN RETURN ARRAY[y, 1, 0]; END IF;
  IF n = 1 THEN RETURN ARRAY[y - offsets[1], 1, coalesce(offset_errs[1], 0)]; END IF;
  -- segment in observed space: o_j = knot_j + offset_j
  WHILE j < n - 1 AND y >= knots[j + 1] + offsets[j + 1] LOOP
    j := j + 1;
  END LOOP;
  o0 := knots[j] + offsets[j];
  o1 := knots[j + 1] + offsets[j + 1];
  dydx := (o1 - o0) / (knots[j + 1] - knots[j]);
  IF dydx <= 0.05 THEN dydx := 0.05; END IF;   -- a scale folded over itself cannot be inverted
  t := (y - o0) / dydx / (knots[j + 1] - knots[j]);
  RETURN ARRAY[knots[j] + t * (knots[j + 1] - knots[j]), 1 / dydx,
               (abs(1 - t) * coalesce(offset_errs[j], 0) + abs(t) * coalesce(offset_errs[j + 1], 0)) / dydx];
END $$;

-- Per survey and label: the calibration as users read it (the columns of the 0002 view, and the
-- fitted model). status: reference, fallback_scale (the anchor of a label the reference lacks),
-- calibrated, or uncalibrated (fit_status says too_few where the survey shares too few stars).
CREATE VIEW xpmet.survey_zero_point AS
SELECT c.survey_id, c.survey, c.label,
       CASE WHEN c.status = 'too_few' THEN 'uncalibrated' ELSE c.status END AS status,
       c.calibrated_on, c.reference, coalesce(c.zero_point, 0) AS zero_point,
       CASE WHEN c.status IN ('reference', 'fallback_scale', 'calibrated') THEN coalesce(c.zero_point_err, 0) END
         AS zero_point_err,
       c.pivot, c.slope, c.slope_err, coalesce(c.n_stars, 0) AS n_stars,
       coalesce(c.n_shared_with_reference, 0) AS n_shared_with_reference, c.scatter,
       c.status AS fit_status, c.knots, c.offsets, c.offset_errs, c.teff_coef, c.teff_pivot, c.logg_coef, c.logg_pivot, c.n_pairs,
       c.n_clipped, c.err_scale, c.error_floor_fitted, c.error_floor_prior, c.chi2_dof, c.fitted_at
FROM xpmet.survey_calibration c;
COMMENT ON VIEW xpmet.survey_zero_point IS
  'Per survey and label: the joint calibration onto the reference scale (offset, its systematic error, trend, error model)';

-- Per-survey values on the reference scale. err: the star''s own statistical error with the fitted
-- error model, sqrt((err_scale * err)^2 + floor^2), over the local slope of the scale; err_sys: the
-- calibration''s systematic error (shared by every star of the survey: not averaged down later).
-- A (survey, label) fitted before this survey was loaded, or never, is uncalibrated: as it is.
CREATE VIEW xpmet.calibrated_measurement AS
WITH s AS (
  SELECT s.*,
         max(s.value) FILTER (WHERE s.label = 'teff') OVER w AS own_teff,
         max(s.value) FILTER (WHERE s.label = 'logg') OVER w AS own_logg
  FROM xpmet.survey_source_label s
  WINDOW w AS (PARTITION BY s.source_id, s.survey_id)
),
c AS (
  SELECT s.*, z.status, z.knots, z.offsets, z.offset_errs, z.err_scale,
         coalesce(z.error_floor_fitted, sqrt(greatest(s.err ^ 2 - s.err_stat ^ 2, 0))) AS floor,
         xpmet.calibrate_value(
           s.value - CASE WHEN s.label <> 'teff' THEN coalesce(z.teff_coef * (s.own_teff - z.teff_pivot), 0) ELSE 0 END
                   - CASE WHEN s.label <> 'logg' THEN coalesce(z.logg_coef * (s.own_logg - z.logg_pivot), 0) ELSE 0 END,
           z.knots, z.offsets, z.offset_errs) AS cal
  FROM s LEFT JOIN xpmet.survey_calibration z ON z.survey_id = s.survey_id AND z.label = s.label
)
SELECT c.source_id, c.survey_id, c.survey, c.label,
       CASE WHEN c.status IN ('reference', 'fallback_scale', 'calibrated') THEN c.cal[1] ELSE c.value END AS value,
       CASE WHEN c.status IN ('reference', 'fallback_scale', 'calibrated')
            THEN sqrt((coalesce(c.err_scale, 1) * c.err_stat) ^ 2 + c.floor ^ 2) * c.cal[2]
            ELSE c.err END AS err,
       CASE WHEN c.status IN ('reference', 'fallback_scale', 'calibrated') THEN c.cal[3] ELSE 0 END AS err_sys,
       c.value AS raw_value,
       CASE WHEN c.status IN ('reference', 'fallback_scale', 'calibrated') THEN c.status ELSE 'uncalibrated' END
         AS calibration,
       c.n_rows, c.ambiguous, c.duplicate_claim
FROM c;
COMMENT ON VIEW xpmet.calibrated_measurement IS
  'Per source, survey and label: the value on the reference scale, its statistical error and the calibration''s systematic error';

-- Robust rejection (as in 0002): with 3 or more surveys, each measurement''s leave-one-out z score
-- against the weighted mean of the others; the worst one is rejected when |z| > label_setting.clip.
CREATE VIEW xpmet.label_measurement AS
WITH cfg AS (SELECT clip FROM xpmet.label_setting WHERE id = 1),
m AS (SELECT c.*, 1.0 / c.err ^ 2 AS w,
             count(*) OVER p AS n, sum(1.0 / c.err ^ 2) OVER p AS sw, sum(c.value / c.err ^ 2) OVER p AS swx
      FROM xpmet.calibrated_measurement c
      WINDOW p AS (PARTITION BY c.source_id, c.label)),
z AS (SELECT m.*, CASE WHEN m.n >= 3 THEN (m.value - (m.swx - m.w * m.value) / (m.sw - m.w))
                                          / sqrt(m.err ^ 2 + 1.0 / (m.sw - m.w)) END AS loo_z
      FROM m)
SELECT z.source_id, z.survey_id, z.survey, z.label, z.value, z.err, z.err_sys, z.raw_value, z.calibration,
       z.ambiguous, z.duplicate_claim, z.loo_z,
       coalesce(abs(z.loo_z) > cfg.clip AND row_number() OVER (PARTITION BY z.source_id, z.label
                                                               ORDER BY abs(z.loo_z) DESC NULLS LAST) = 1,
                false) AS rejected
FROM z, cfg;
COMMENT ON VIEW xpmet.label_measurement IS
  'Calibrated measurements with their leave-one-out z score and the rejection decision';

-- One row per Gaia source (as in 0002), and the calibration's systematic error: the weighted mean
-- of the contributing surveys' err_sys (they share the reference scale, so it is not averaged down
-- as if random), added in quadrature to <label>_err and reported as <label>_err_sys.
CREATE MATERIALIZED VIEW xpmet.labels AS
WITH cfg AS (SELECT max_chi2_dof, reference FROM xpmet.label_setting WHERE id = 1),
lm AS MATERIALIZED (SELECT * FROM xpmet.label_measurement),
per AS (
  SELECT source_id, label,
         sum(w * value) / sum(w) AS value,
         sqrt(1.0 / sum(w)) AS err_stat,
         sum(w * err_sys) / sum(w) AS err_sys,
         count(*)::int AS n,
         greatest(sum(w * value ^ 2) - sum(w * value) ^ 2 / sum(w), 0) AS chi2,
         bool_or(calibration = 'uncalibrated') AS uncalibrated,
         bool_or(ambiguous) AS ambiguous, bool_or(duplicate_claim) AS duplicate_claim,
         array_agg(survey ORDER BY survey) AS surveys
  FROM (SELECT *, 1.0 / err ^ 2 AS w FROM lm WHERE NOT rejected) k
  GROUP BY source_id, label
),
rej AS (SELECT source_id, label, count(*) FILTER (WHERE rejected) AS n_rejected
        FROM lm GROUP BY source_id, label),
lab AS (
  SELECT per.*, coalesce(rej.n_rejected, 0) AS n_rejected,
         sqrt((per.err_stat * CASE WHEN per.n > 1 THEN greatest(1.0, sqrt(per.chi2 / (per.n - 1))) ELSE 1.0 END) ^ 2
              + per.err_sys ^ 2) AS err,
         per.n > 1 AND per.chi2 / (per.n - 1) > cfg.max_chi2_dof AS discordant
  FROM per JOIN rej USING (source_id, label), cfg
),
star AS (
  SELECT source_id,
         max(value) FILTER (WHERE label = 'teff') AS teff, max(err) FILTER (WHERE label = 'teff') AS teff_err,
         max(n) FILTER (WHERE label = 'teff') AS teff_n, max(chi2) FILTER (WHERE label = 'teff') AS teff_chi2,
         max(err_sys) FILTER (WHERE label = 'teff') AS teff_err_sys,
         max(value) FILTER (WHERE label = 'logg') AS logg, max(err) FILTER (WHERE label = 'logg') AS logg_err,
         max(n) FILTER (WHERE label = 'logg') AS logg_n, max(chi2) FILTER (WHERE label = 'logg') AS logg_chi2,
         max(err_sys) FILTER (WHERE label = 'logg') AS logg_err_sys,
         max(value) FILTER (WHERE label = 'feh') AS feh, max(err) FILTER (WHERE label = 'feh') AS feh_err,
         max(n) FILTER (WHERE label = 'feh') AS feh_n, max(chi2) FILTER (WHERE label = 'feh') AS feh_chi2,
         max(err_sys) FILTER (WHERE label = 'feh') AS feh_err_sys,
         max(value) FILTER (WHERE label = 'alpha_fe') AS alpha_fe,
         max(err) FILTER (WHERE label = 'alpha_fe') AS alpha_fe_err,
         max(n) FILTER (WHERE label = 'alpha_fe') AS alpha_fe_n,
         max(chi2) FILTER (WHERE label = 'alpha_fe') AS alpha_fe_chi2,
         max(err_sys) FILTER (WHERE label = 'alpha_fe') AS alpha_fe_err_sys,
         (  CASE WHEN bool_or(discordant AND label = 'teff') THEN {{mask:label.teff_discordant}} ELSE 0 END
          | CASE WHEN bool_or(discordant AND label = 'logg') THEN {{mask:label.logg_discordant}} ELSE 0 END
          | CASE WHEN bool_or(discordant AND label = 'feh') THEN {{mask:label.feh_discordant}} ELSE 0 END
          | CASE WHEN bool_or(discordant AND label = 'alpha_fe') THEN {{mask:label.alpha_fe_discordant}} ELSE 0 END
          | CASE WHEN sum(n_rejected) > 0 THEN {{mask:label.rejected_measurement}} ELSE 0 END
          | CASE WHEN bool_or(uncalibrated) THEN {{mask:label.uncalibrated_survey}} ELSE 0 END
          | CASE WHEN bool_or(ambiguous) THEN {{mask:label.ambiguous_match}} ELSE 0 END
          | CASE WHEN bool_or(duplicate_claim) THEN {{mask:label.duplicate_claim}} ELSE 0 END
          | CASE WHEN max(n) FILTER (WHERE label = 'feh') = 1 THEN {{mask:label.single_survey_feh}} ELSE 0 END)::int AS label_flags,
         sum(n_rejected)::int AS n_rejected
  FROM lab GROUP BY source_id
),
srv AS (SELECT source_id, array_agg(DISTINCT survey ORDER BY survey) AS surveys
        FROM lm WHERE NOT rejected GROUP BY source_id)
SELECT star.source_id,
       star.teff, star.teff_err, star.teff_n, star.teff_chi2,
       star.logg, star.logg_err, star.logg_n, star.logg_chi2,
       star.feh, star.feh_err, star.feh_n, star.feh_chi2,
       star.alpha_fe, star.alpha_fe_err, star.alpha_fe_n, star.alpha_fe_chi2,
       cardinality(srv.surveys) AS n_surveys, srv.surveys, star.label_flags, star.n_rejected,
       cfg.reference, (SELECT version FROM xpmet.xmatch_run WHERE is_current) AS xmatch_version,
       star.teff_err_sys, star.logg_err_sys, star.feh_err_sys, star.alpha_fe_err_sys
FROM star JOIN srv USING (source_id), cfg;
CREATE UNIQUE INDEX ix_labels_source ON xpmet.labels (source_id);
COMMENT ON MATERIALIZED VIEW xpmet.labels IS
  'One row per Gaia source: homogenised labels on the reference scale; <label>_err includes the calibration''s systematic <label>_err_sys (bits: xpmet.flags.LABEL_BITS)';

-- xpmet.training_set: training_set_0006.sql (migration 0009 applies it again after this file).

-- Recompute the materialized label view (xpmet.labels.refresh() fits survey_calibration first; from
-- SQL alone the stored calibration is applied as it is), and remember the crossmatch it was built from.
CREATE OR REPLACE FUNCTION xpmet.refresh_labels() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  SET LOCAL jit = off;
  -- the views chain CTEs the planner has no statistics for: hash joins throughout (see labels.sql)
  SET LOCAL enable_nestloop = off;
  ANALYZE xpmet.survey_star;
  ANALYZE xpmet.xmatch;
  REFRESH MATERIALIZED VIEW xpmet.labels;
  INSERT INTO xpmet.label_setting (id) VALUES (1) ON CONFLICT DO NOTHING;
  UPDATE xpmet.label_setting
     SET labels_xmatch_version = (SELECT version FROM xpmet.xmatch_run WHERE is_current),
         labels_refreshed_at = now()
   WHERE id = 1;
END $$;
