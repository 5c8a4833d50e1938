-- Label views of migration 0002. Dropped by labels_drop.sql.
-- Chain: xmatch_current -> survey_measurement -> survey_source_label -> survey_zero_point (materialized)
--        -> calibrated_measurement -> label_measurement -> labels (materialized) -> training_set.
-- Settings (reference scale, clipping, cuts) come from the one row of xpmet.label_setting;
-- xpmet.refresh_labels() (or xpmet labels / xpmet.labels.refresh()) recomputes the materialized views.

-- The rows of the current crossmatch run (the one xpmet xmatch marked is_current).
CREATE VIEW xpmet.xmatch_current AS
SELECT r.version AS xmatch_version, x.*
FROM xpmet.xmatch x JOIN xpmet.xmatch_run r USING (run_id)
WHERE r.is_current;
COMMENT ON VIEW xpmet.xmatch_current IS 'Crossmatch rows of the current run (xpmet xmatch)';

-- One row per usable (survey row, label): matched to Gaia, row quality ok, label not flagged.
-- Sentinels never get here: the loader stored them as NULL (and set <label>_invalid).
CREATE VIEW xpmet.survey_measurement AS
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
COMMENT ON VIEW xpmet.survey_measurement IS
  'Usable label measurements (long form) of matched survey rows: quality_ok, not flagged, no sentinels';

-- One value per (Gaia source, survey, label): repeat rows of a survey combined by inverse variance,
-- the survey''s error floor added in quadrature (a missing error counts as the floor).
CREATE VIEW xpmet.survey_source_label AS
SELECT source_id, survey_id, survey, label,
       sum(value * w) / sum(w) AS value,
       sqrt(1.0 / sum(w) + max(error_floor) ^ 2) AS err,
       sqrt(1.0 / sum(w)) AS err_stat,
       count(*)::int AS n_rows,
       bool_or(ambiguous) AS ambiguous, bool_or(duplicate_claim) AS duplicate_claim
FROM (SELECT *, 1.0 / greatest(coalesce(err, error_floor), 1e-6) ^ 2 AS w FROM xpmet.survey_measurement) m
GROUP BY source_id, survey_id, survey, label;
COMMENT ON VIEW xpmet.survey_source_label IS
  'Per source, survey and label: inverse-variance mean of the survey''s rows, error with floor';

-- A survey-minus-reference difference on one shared star (input of fit_zero_points).
CREATE TYPE xpmet.zp_delta AS (survey_id smallint, survey text, label text, x float8, delta float8, via text,
                               x_var float8);

-- Robust zero point per (survey, label): median/MAD clip at 4 sigma, then the mean of the kept
-- differences and its standard error; a linear trend of the difference against the survey's own
-- value when n >= min_trend_n and the slope is significant at 3 sigma (else slope 0). The survey's
-- own noise is in both x and delta and biases a plain least-squares slope upwards: its variance
-- (x_var, the survey's statistical error squared) is removed from Sxy and Sxx (errors-in-variables).
CREATE FUNCTION xpmet.fit_zero_points(d xpmet.zp_delta[], min_n int, min_trend_n int)
RETURNS TABLE (survey_id smallint, survey text, label text, via text, status text, n_stars int,
               zero_point float8, zero_point_err float8, scatter float8, pivot float8,
               slope float8, slope_err float8)
LANGUAGE sql STABLE AS $fit$
WITH u AS (SELECT * FROM unnest(d)),
med AS (SELECT u.survey_id, u.label, percentile_cont(0.5) WITHIN GROUP (ORDER BY u.delta) AS m
        FROM u GROUP BY 1, 2),
mad AS (SELECT u.survey_id, u.label, med.m,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(u.delta - med.m)) AS mad
        FROM u JOIN med ON med.survey_id = u.survey_id AND med.label = u.label GROUP BY 1, 2, 3),
kept AS (SELECT u.* FROM u JOIN mad ON mad.survey_id = u.survey_id AND mad.label = u.label
         WHERE abs(u.delta - mad.m) <= greatest(4 * 1.4826 * mad.mad, 1e-9)),
fit AS (SELECT k.survey_id, k.survey, k.label, k.via, count(*)::int AS n, avg(k.delta) AS zp,
               stddev_samp(k.delta) AS sd, avg(k.x) AS pivot, regr_slope(k.delta, k.x) AS b,
               regr_sxx(k.delta, k.x) AS sxx, regr_syy(k.delta, k.x) AS syy, regr_sxy(k.delta, k.x) AS sxy,
               sum(coalesce(k.x_var, 0)) AS svar
        FROM kept k GROUP BY 1, 2, 3, 4),
fit2 AS (SELECT f.*, CASE WHEN f.sxx - f.svar > 0.1 * f.sxx
                          THEN (f.sxy - f.svar) / (f.sxx - f.svar) ELSE f.b END AS b_eiv
         FROM fit f),
se AS (SELECT f.*, CASE WHEN f.n > 2 AND f.sxx > 0
                        THEN sqrt(greatest(f.syy - f.sxy ^ 2 / f.sxx, 0) / (f.n - 2) / f.sxx) END AS b_err
       FROM fit2 f)
SELECT se.survey_id, se.survey, se.label, se.via,
       CASE WHEN se.n >= min_n THEN 'calibrated' ELSE 'too_few' END,
       se.n, se.zp, se.sd / sqrt(se.n), se.sd, se.pivot,
       CASE WHEN se.n >= min_trend_n AND se.b_err IS NOT NULL AND abs(se.b_eiv) > 3 * se.b_err
            THEN se.b_eiv ELSE 0 END,
       se.b_err
FROM se
$fit$;

-- Zero point (and trend where the overlap allows) of every survey and label against the reference:
-- delta = survey - reference on shared stars; median/MAD clip at 4 sigma, then mean and its error;
-- with >= min_trend_overlap stars a linear trend of delta against the survey''s own value, applied
-- when significant at 3 sigma. Surveys with too few stars in common with the reference are
-- calibrated against the fallback survey (itself calibrated on the reference) when set; for a
-- label the reference does not measure at all (e.g. alpha_fe of the benchmark stars), the fallback
-- survey's own scale is used (status fallback_scale).
CREATE MATERIALIZED VIEW xpmet.survey_zero_point AS
WITH cfg AS (SELECT * FROM xpmet.label_setting WHERE id = 1),
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
WITH cfg AS (SELECT * FROM xpmet.label_setting WHERE id = 1),
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
WITH cfg AS (SELECT * FROM xpmet.label_setting WHERE id = 1),
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

-- xpmet.training_set: training_set_0002.sql (migration 0002 applies it after this file).


-- Recompute the materialized label views (after xpmet xmatch or a change of label_setting).
CREATE FUNCTION xpmet.refresh_labels() RETURNS void LANGUAGE plpgsql AS $$
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
