-- Label views of migration 0002 (xpmet issue 5). Dropped by labels_drop.sql.

-- The rows of the current crossmatch run (the one xpmet xmatch marked is_current).
CREATE VIEW xpmet.xmatch_current AS
SELECT r.version AS xmatch_version, x.*
FROM xpmet.xmatch x JOIN xpmet.xmatch_run r USING (run_id)
WHERE r.is_current;
