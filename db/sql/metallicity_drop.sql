-- Undoes db/sql/metallicity.sql.
DROP VIEW IF EXISTS xpmet.metallicity;
DROP VIEW IF EXISTS xpmet.metallicity_all;
DROP FUNCTION IF EXISTS xpmet.metallicity_model();
