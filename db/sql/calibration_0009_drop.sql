-- Downgrade of calibration_0009.sql: the joint calibration's views go, the 0002 views come back
-- (label_views_0002.sql, then training_set_0006.sql; the table itself is dropped by the migration).
DROP VIEW IF EXISTS xpmet.training_set;
DROP MATERIALIZED VIEW IF EXISTS xpmet.labels;
DROP VIEW IF EXISTS xpmet.label_measurement;
DROP VIEW IF EXISTS xpmet.calibrated_measurement;
DROP VIEW IF EXISTS xpmet.survey_zero_point;
DROP FUNCTION IF EXISTS xpmet.calibrate_value(float8, float8[], float8[], float8[]);
