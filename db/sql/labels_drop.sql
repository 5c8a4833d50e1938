-- Downgrade of db/sql/labels.sql (reverse order of creation).
DROP VIEW IF EXISTS xpmet.xmatch_current;
