-- xpmet.external_photometry: 2MASS and AllWISE magnitudes of Gaia sources, through the Gaia DR3
-- best-neighbour tables. Applied by the external-photometry migration; undone by external_photometry_drop.sql.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)
--
-- One row per Gaia source of xpmet.gaia_source with at least one loaded neighbour's photometry.
-- Built on gaia_source so that a join on source_id (xpmet export) reaches every table by its key.
-- A band without an error (2MASS ph_qual U or X, AllWISE U: an upper limit or no valid brightness)
-- has no magnitude here; phot_flags (xpmet.flags.EXTERNAL_PHOT_BITS) carries the catalogues' own
-- quality, contamination and blending flags.

CREATE VIEW xpmet.external_photometry AS
SELECT g.source_id,
       tm.designation AS tmass_designation,
       CASE WHEN tm.j_msigcom IS NOT NULL THEN tm.j_m END AS tmass_j, tm.j_msigcom AS tmass_j_err,
       CASE WHEN tm.h_msigcom IS NOT NULL THEN tm.h_m END AS tmass_h, tm.h_msigcom AS tmass_h_err,
       CASE WHEN tm.ks_msigcom IS NOT NULL THEN tm.ks_m END AS tmass_ks, tm.ks_msigcom AS tmass_ks_err,
       tm.ph_qual AS tmass_ph_qual, tm.cc_flg AS tmass_cc_flg,
       tb.angular_distance AS tmass_angular_distance, tb.number_of_mates AS tmass_number_of_mates,
       aw.designation AS allwise_designation,
       CASE WHEN aw.w1sigmpro IS NOT NULL THEN aw.w1mpro END AS w1, aw.w1sigmpro AS w1_err,
       CASE WHEN aw.w2sigmpro IS NOT NULL THEN aw.w2mpro END AS w2, aw.w2sigmpro AS w2_err,
       aw.ph_qual AS allwise_ph_qual, aw.cc_flags AS allwise_cc_flags,
       ab.angular_distance AS allwise_angular_distance, ab.number_of_mates AS allwise_number_of_mates,
       (CASE WHEN tm.designation IS NULL THEN 0 ELSE
            CASE WHEN coalesce(substr(tm.ph_qual, 1, 1), 'X') NOT IN ('A', 'B', 'C')
                 THEN 1 << {{bit:external_photometry.tmass_j_poor}} ELSE 0 END
          | CASE WHEN coalesce(substr(tm.ph_qual, 2, 1), 'X') NOT IN ('A', 'B', 'C')
                 THEN 1 << {{bit:external_photometry.tmass_h_poor}} ELSE 0 END
          | CASE WHEN coalesce(substr(tm.ph_qual, 3, 1), 'X') NOT IN ('A', 'B', 'C')
                 THEN 1 << {{bit:external_photometry.tmass_ks_poor}} ELSE 0 END
          | CASE WHEN coalesce(substr(tm.cc_flg, 1, 3), '000') <> '000'
                 THEN 1 << {{bit:external_photometry.tmass_contaminated}} ELSE 0 END
          | CASE WHEN coalesce(tb.number_of_mates, 0) > 0
                 THEN 1 << {{bit:external_photometry.tmass_shared}} ELSE 0 END END)
     | (CASE WHEN aw.designation IS NULL THEN 0 ELSE
            CASE WHEN coalesce(substr(aw.ph_qual, 1, 1), 'X') NOT IN ('A', 'B')
                 THEN 1 << {{bit:external_photometry.w1_poor}} ELSE 0 END
          | CASE WHEN coalesce(substr(aw.ph_qual, 2, 1), 'X') NOT IN ('A', 'B')
                 THEN 1 << {{bit:external_photometry.w2_poor}} ELSE 0 END
          | CASE WHEN coalesce(substr(aw.cc_flags, 1, 2), '00') <> '00'
                 THEN 1 << {{bit:external_photometry.allwise_contaminated}} ELSE 0 END
          | CASE WHEN coalesce(ab.number_of_mates, 0) > 0
                 THEN 1 << {{bit:external_photometry.allwise_shared}} ELSE 0 END END) AS phot_flags
FROM xpmet.gaia_source g
LEFT JOIN xpmet.tmass_best_neighbour tb ON tb.source_id = g.source_id
LEFT JOIN xpmet.photometry_tmass tm ON tm.designation = tb.original_ext_source_id
LEFT JOIN xpmet.allwise_best_neighbour ab ON ab.source_id = g.source_id
LEFT JOIN xpmet.photometry_allwise aw ON aw.designation = ab.original_ext_source_id
WHERE tm.designation IS NOT NULL OR aw.designation IS NOT NULL;
COMMENT ON VIEW xpmet.external_photometry IS
    '2MASS PSC and AllWISE photometry of Gaia sources through the Gaia DR3 best-neighbour tables '
    '(phot_flags: xpmet.flags.EXTERNAL_PHOT_BITS)';
