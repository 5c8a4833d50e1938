-- Downgrade of db/sql/labels.sql (reverse order of creation).
DROP FUNCTION IF EXISTS xpmet.refresh_labels();
DROP VIEW IF EXISTS xpmet.training_set;
DROP MATERIALIZED VIEW IF EXISTS xpmet.labels;
DROP VIEW IF EXISTS xpmet.label_measurement;
DROP VIEW IF EXISTS xpmet.calibrated_measurement;
DROP MATERIALIZED VIEW IF EXISTS xpmet.survey_zero_point;
DROP FUNCTION IF EXISTS xpmet.fit_zero_points(xpmet.zp_delta[], int, int);
DROP TYPE IF EXISTS xpmet.zp_delta;
DROP VIEW IF EXISTS xpmet.survey_source_label;
DROP VIEW IF EXISTS xpmet.survey_measurement;
DROP VIEW IF EXISTS xpmet.xmatch_current;
