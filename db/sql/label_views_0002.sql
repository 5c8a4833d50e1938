-- The label views of migrations 0002/0005 (survey_zero_point through labels, and refresh_labels),
-- copied from labels.sql and integrity.sql: migration 0009's downgrade restores them with this file
-- (the settings by name: SELECT * would tie the views to columns later migrations add and drop).

-- Zero point (and trend where the overlap allows) of every survey and label against the reference:
-- delta = survey - reference on shared stars; median/MAD clip at 4 sigma, then mean and its error;
-- with >= min_trend_overlap stars a linear trend of delta against the survey''s own value, applied
-- when significant at 3 sigma. Surveys with too few stars in common with the reference are
-- calibrated against the fallback survey (itself calibrated on the reference) when set; for a
-- label the reference does not measure at all (e.g. alpha_fe of the benchmark stars), the fallback
-- survey's own scale is used (status fallback_scale).
CREATE MATERIALIZED VIEW xpmet.survey_zero_point AS
WITH cfg AS (SELECT id, reference, fallback, min_overlap, min_trend_overlap, clip, max_chi2_dof, max_feh_err,
                   min_xp_snr, updated_at FROM xpmet.label_setting WHERE id = 1),
ssl AS MATERIALIZED (SELECT * FROM xpmet.survey_source_label),
ref AS (SELECT s.* FROM ssl s, cfg WHERE s.survey = cfg.reference),
ref_labels AS (SELECT DISTINCT label FROM ref),
d1 AS (
  SELECT o.survey_id, o.survey, o.label, o.value AS x, o.value - r.value AS delta, cfg.reference AS via,
         o.err_stat ^ 2 AS x_var
  FROM ssl o JOIN ref r USING (source_id, label), cfg
  WHERE o.survey_id <> r.survey_id
),
z1 AS (SELECT z.* FROM cfg, xpmet.fit_zero_points((SELECT array_agg(ROW(d1.*)::xpmet.zp_delta) FROM d1),
                                                 cfg.min_overlap, cfg.min_trend_overlap) z),
fb AS (  -- fallback survey values on the reference scale; for a label the reference lacks, as they are
  SELECT s.source_id, s.label,
         s.value - coalesce(z.zero_point, 0) - coalesce(z.slope, 0) * (s.value - coalesce(z.pivot, 0)) AS value
  FROM ssl s CROSS JOIN cfg
  LEFT JOIN z1 z ON z.survey_id = s.survey_id AND z.label = s.label AND z.status = 'calibrated'
  WHERE s.survey = cfg.fallback AND (z.status IS NOT NULL OR s.label NOT IN (SELECT label FROM ref_labels))
),
d2 AS (
  SELECT o.survey_id, o.survey, o.label, o.value AS x, o.value - f.value AS delta, cfg.fallback AS via,
         o.err_stat ^ 2 AS x_var
  FROM ssl o JOIN fb f USING (source_id, label), cfg
  WHERE o.survey <> cfg.fallback AND o.survey <> cfg.reference
    AND NOT EXISTS (SELECT 1 FROM z1 WHERE z1.survey_id = o.survey_id AND z1.label = o.label
                    AND z1.status = 'calibrated')
),
z2 AS (SELECT z.* FROM cfg, xpmet.fit_zero_points((SELECT array_agg(ROW(d2.*)::xpmet.zp_delta) FROM d2),
                                                 cfg.min_overlap, cfg.min_trend_overlap) z),
present AS (SELECT DISTINCT survey_id, survey, label FROM ssl),
zz AS (SELECT * FROM z1 WHERE status = 'calibrated'       -- z2 only holds surveys z1 did not calibrate
       UNION ALL SELECT * FROM z2 WHERE status = 'calibrated'),
chosen AS (
  SELECT p.survey_id, p.survey, p.label, cfg.reference,
         CASE WHEN p.survey = cfg.reference THEN 'reference'
              WHEN zz.via = cfg.reference THEN 'calibrated'
              WHEN zz.via IS NOT NULL THEN 'via_fallback'
              WHEN p.survey = cfg.fallback AND p.label NOT IN (SELECT label FROM ref_labels) THEN 'fallback_scale'
              ELSE 'uncalibrated' END AS status,
         zz.via, zz.zero_point, zz.zero_point_err, zz.pivot, zz.slope, zz.slope_err, zz.n_stars, zz.scatter,
         coalesce((SELECT z1.n_stars FROM z1 WHERE z1.survey_id = p.survey_id AND z1.label = p.label), 0)
           AS n_shared_with_reference,
         (SELECT zf.zero_point_err FROM z1 zf WHERE zf.survey = cfg.fallback AND zf.label = p.label
            AND zf.status = 'calibrated') AS fallback_err
  FROM present p CROSS JOIN cfg
  LEFT JOIN zz ON zz.survey_id = p.survey_id AND zz.label = p.label
)
SELECT survey_id, survey, label, status, via AS calibrated_on, reference,
       coalesce(zero_point, 0) AS zero_point,
       CASE WHEN status IN ('reference', 'fallback_scale') THEN 0
            WHEN status = 'calibrated' THEN zero_point_err
            WHEN status = 'via_fallback' THEN sqrt(zero_point_err ^ 2 + coalesce(fallback_err, 0) ^ 2)
            END AS zero_point_err,
       pivot, slope, slope_err, coalesce(n_stars, 0) AS n_stars, n_shared_with_reference, scatter
FROM chosen;
COMMENT ON MATERIALIZED VIEW xpmet.survey_zero_point IS
  'Per survey and label: offset from the reference scale (survey - reference), its error, trend, N';

-- Per-survey values put on the reference scale: value - (zero_point + slope * (value - pivot)),
-- error = survey error (with floor) and the zero point's error in quadrature.
CREATE VIEW xpmet.calibrated_measurement AS
SELECT s.source_id, s.survey_id, s.survey, s.label,
       s.value - z.zero_point - coalesce(z.slope, 0) * (s.value - coalesce(z.pivot, 0)) AS value,
       sqrt(s.err ^ 2 + coalesce(z.zero_point_err, 0) ^ 2) AS err,
       s.value AS raw_value, z.status AS calibration, s.n_rows, s.ambiguous, s.duplicate_claim
FROM xpmet.survey_source_label s
JOIN xpmet.survey_zero_point z ON z.survey_id = s.survey_id AND z.label = s.label;
COMMENT ON VIEW xpmet.calibrated_measurement IS
  'Per source, survey and label: the value on the reference scale with its error';

-- Robust rejection: with 3 or more surveys, each measurement''s leave-one-out z score against the
-- weighted mean of the others; the worst one is rejected when |z| > label_setting.clip.
-- With 2 surveys nothing can be told apart: a large chi2 flags the label discordant instead.
CREATE VIEW xpmet.label_measurement AS
WITH cfg AS (SELECT id, reference, fallback, min_overlap, min_trend_overlap, clip, max_chi2_dof, max_feh_err,
                   min_xp_snr, updated_at FROM xpmet.label_setting WHERE id = 1),
m AS (SELECT c.*, 1.0 / c.err ^ 2 AS w,
             count(*) OVER p AS n, sum(1.0 / c.err ^ 2) OVER p AS sw, sum(c.value / c.err ^ 2) OVER p AS swx
      FROM xpmet.calibrated_measurement c
      WINDOW p AS (PARTITION BY c.source_id, c.label)),
z AS (SELECT m.*, CASE WHEN m.n >= 3 THEN (m.value - (m.swx - m.w * m.value) / (m.sw - m.w))
                                          / sqrt(m.err ^ 2 + 1.0 / (m.sw - m.w)) END AS loo_z
      FROM m)
SELECT z.source_id, z.survey_id, z.survey, z.label, z.value, z.err, z.raw_value, z.calibration,
       z.ambiguous, z.duplicate_claim, z.loo_z,
       coalesce(abs(z.loo_z) > cfg.clip AND row_number() OVER (PARTITION BY z.source_id, z.label
                                                               ORDER BY abs(z.loo_z) DESC NULLS LAST) = 1,
                false) AS rejected
FROM z, cfg;
COMMENT ON VIEW xpmet.label_measurement IS
  'Calibrated measurements with their leave-one-out z score and the rejection decision';

-- One row per Gaia source: inverse-variance weighted mean of each label over the kept surveys,
-- its error (inflated by sqrt(chi2/dof) when the surveys disagree more than their errors allow),
-- chi2 and number of surveys per label, the contributing surveys and label_flags
-- (bits: xpmet.flags.LABEL_BITS, rendered into the placeholders below when applied).
CREATE MATERIALIZED VIEW xpmet.labels AS
WITH cfg AS (SELECT id, reference, fallback, min_overlap, min_trend_overlap, clip, max_chi2_dof, max_feh_err,
                   min_xp_snr, updated_at FROM xpmet.label_setting WHERE id = 1),
lm AS MATERIALIZED (SELECT * FROM xpmet.label_measurement),
per AS (
  SELECT source_id, label,
         sum(w * value) / sum(w) AS value,
         sqrt(1.0 / sum(w)) AS err_stat,
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
         per.err_stat * CASE WHEN per.n > 1 THEN greatest(1.0, sqrt(per.chi2 / (per.n - 1))) ELSE 1.0 END AS err,
         per.n > 1 AND per.chi2 / (per.n - 1) > cfg.max_chi2_dof AS discordant
  FROM per JOIN rej USING (source_id, label), cfg
),
star AS (
  SELECT source_id,
         max(value) FILTER (WHERE label = 'teff') AS teff, max(err) FILTER (WHERE label = 'teff') AS teff_err,
         max(n) FILTER (WHERE label = 'teff') AS teff_n, max(chi2) FILTER (WHERE label = 'teff') AS teff_chi2,
         max(value) FILTER (WHERE label = 'logg') AS logg, max(err) FILTER (WHERE label = 'logg') AS logg_err,
         max(n) FILTER (WHERE label = 'logg') AS logg_n, max(chi2) FILTER (WHERE label = 'logg') AS logg_chi2,
         max(value) FILTER (WHERE label = 'feh') AS feh, max(err) FILTER (WHERE label = 'feh') AS feh_err,
         max(n) FILTER (WHERE label = 'feh') AS feh_n, max(chi2) FILTER (WHERE label = 'feh') AS feh_chi2,
         max(value) FILTER (WHERE label = 'alpha_fe') AS alpha_fe,
         max(err) FILTER (WHERE label = 'alpha_fe') AS alpha_fe_err,
         max(n) FILTER (WHERE label = 'alpha_fe') AS alpha_fe_n,
         max(chi2) FILTER (WHERE label = 'alpha_fe') AS alpha_fe_chi2,
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
       cfg.reference, (SELECT version FROM xpmet.xmatch_run WHERE is_current) AS xmatch_version
FROM star JOIN srv USING (source_id), cfg;
CREATE UNIQUE INDEX ix_labels_source ON xpmet.labels (source_id);
COMMENT ON MATERIALIZED VIEW xpmet.labels IS
  'One row per Gaia source: homogenised labels on the reference scale (bits: xpmet.flags.LABEL_BITS)';

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
