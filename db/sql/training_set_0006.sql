-- xpmet.training_set from migration 0006: an [Fe/H] that a survey without an [Fe/H] zero point
-- contributed to is not on the reference scale, so it does not train models.
-- What the training export reads: labels joined to Gaia photometry and XP coefficients, after the
-- documented cuts (xpmet.labels.TRAINING_CUTS): [Fe/H] known with feh_err <= max_feh_err; no
-- discordant [Fe/H], ambiguous match, duplicate claim or survey with an uncalibrated [Fe/H]; both XP
-- bands with all 110 coefficient errors finite and positive; XP signal-to-noise
-- sqrt(sum (coef/err)^2) >= min_xp_snr; G known.
CREATE OR REPLACE VIEW xpmet.training_set AS
-- the settings by name (SELECT * would tie the view to columns later migrations add and drop)
WITH cfg AS (SELECT max_feh_err, min_xp_snr FROM xpmet.label_setting WHERE id = 1)
SELECT l.source_id, g.ra, g.dec, g.phot_g_mean_mag, g.phot_bp_mean_mag, g.phot_rp_mean_mag, g.bp_rp,
       g.phot_g_mean_flux, g.parallax, g.parallax_error, g.ag_gspphot,
       x.bp_coefficients, x.bp_coefficient_errors, x.rp_coefficients, x.rp_coefficient_errors,
       l.teff, l.teff_err, l.logg, l.logg_err, l.feh, l.feh_err, l.alpha_fe, l.alpha_fe_err,
       l.n_surveys, l.surveys, l.label_flags, l.xmatch_version, l.reference, q.xp_snr
FROM xpmet.labels l
JOIN xpmet.gaia_source g ON g.source_id = l.source_id
JOIN xpmet.xp_continuous x ON x.source_id = l.source_id
CROSS JOIN cfg
CROSS JOIN LATERAL (
  SELECT sqrt(sum((c / nullif(e, 0)) ^ 2)) AS xp_snr, bool_and(e > 0 AND e < 'Infinity'::real) AS errors_ok
  FROM (SELECT * FROM unnest(x.bp_coefficients, x.bp_coefficient_errors) UNION ALL
        SELECT * FROM unnest(x.rp_coefficients, x.rp_coefficient_errors)) u(c, e)
) q
WHERE l.feh IS NOT NULL AND l.feh_err <= cfg.max_feh_err
  AND l.label_flags & {{mask:label.feh_discordant|ambiguous_match|duplicate_claim}} = 0
  -- [Fe/H] from a survey whose [Fe/H] has no zero point is not on the reference scale (an
  -- uncalibrated [alpha/Fe] or Teff of the same survey does not matter here)
  AND NOT EXISTS (SELECT 1 FROM xpmet.survey_zero_point z
                  WHERE z.label = 'feh' AND z.status = 'uncalibrated' AND z.survey = ANY (l.surveys))
  AND x.bp_coefficients IS NOT NULL AND x.rp_coefficients IS NOT NULL
  AND q.errors_ok AND q.xp_snr >= cfg.min_xp_snr
  AND g.phot_g_mean_mag IS NOT NULL;
COMMENT ON VIEW xpmet.training_set IS
  'Training rows: homogenised labels + Gaia photometry + XP coefficients after the documented cuts';
