-- xpmet.metallicity: one model's predictions with Gaia positions and photometry, for sky queries.
-- Applied by migrations/versions/0003_predictions_views.py; undone by metallicity_drop.sql.
--
-- Which model: the session setting xpmet.model_id when set (SET xpmet.model_id = '3'), otherwise
-- the newest model that has predictions. ra/dec come from gaia_source, so q3c_radial_query /
-- q3c_poly_query on the view use ix_gaia_source_q3c and then the predictions primary key.

CREATE FUNCTION xpmet.metallicity_model() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('xpmet.model_id', true), '')::integer,
                    (SELECT max(model_id) FROM xpmet.predictions))
$$;
COMMENT ON FUNCTION xpmet.metallicity_model() IS
    'Model shown by xpmet.metallicity: setting xpmet.model_id, else the newest model with predictions';

CREATE VIEW xpmet.metallicity_all AS
SELECT p.source_id, p.model_id,
       g.ra, g.dec, g.l, g.b,
       g.parallax, g.parallax_error, g.pmra, g.pmdec, g.ruwe,
       g.phot_g_mean_mag, g.phot_bp_mean_mag, g.phot_rp_mean_mag, g.bp_rp, g.ag_gspphot,
       p.teff, p.teff_err, p.logg, p.logg_err, p.feh, p.feh_err, p.alpha_fe, p.alpha_fe_err,
       p.fit_stat, p.quality_flags, p.recommended
FROM xpmet.predictions p
JOIN xpmet.gaia_source g ON g.source_id = p.source_id;
COMMENT ON VIEW xpmet.metallicity_all IS
    'Predictions of every model joined to Gaia positions and photometry (filter on model_id)';

CREATE VIEW xpmet.metallicity AS
SELECT * FROM xpmet.metallicity_all
-- OFFSET 0 keeps the sub-select from being flattened: one evaluation per query (an InitPlan), not per row.
WHERE model_id = (SELECT xpmet.metallicity_model() OFFSET 0);
COMMENT ON VIEW xpmet.metallicity IS
    'Predictions of one model (setting xpmet.model_id, else the newest with predictions) with positions; q3c-indexed through gaia_source';
