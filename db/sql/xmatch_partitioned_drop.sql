-- Undoes xmatch_partitioned.sql (migration 0008): xpmet.xmatch one plain table again, and the
-- view xmatch_current as migration 0002 made it.
-- (No percent signs in this file: SQLAlchemy's text() would double them.)

ALTER TABLE xpmet.xmatch RENAME TO xmatch_partitioned;
ALTER TABLE xpmet.xmatch_partitioned RENAME CONSTRAINT xmatch_pkey TO xmatch_partitioned_pkey;
ALTER INDEX xpmet.ix_xmatch_source RENAME TO ix_xmatch_partitioned_source;

CREATE TABLE xpmet.xmatch (LIKE xpmet.xmatch_partitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
                           INCLUDING COMMENTS);
INSERT INTO xpmet.xmatch SELECT * FROM xpmet.xmatch_partitioned;
ALTER TABLE xpmet.xmatch ADD CONSTRAINT xmatch_pkey PRIMARY KEY (run_id, star_id);
CREATE INDEX ix_xmatch_source ON xpmet.xmatch (source_id);
COMMENT ON TABLE xpmet.xmatch IS 'Best Gaia neighbour of every survey row, per crossmatch run';
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'xpmet_reader')
       AND has_table_privilege('xpmet_reader', 'xpmet.xmatch_partitioned', 'SELECT') THEN
        GRANT SELECT ON xpmet.xmatch TO xpmet_reader;
    END IF;
END $$;

CREATE OR REPLACE VIEW xpmet.xmatch_current AS
SELECT r.version AS xmatch_version, x.*
FROM xpmet.xmatch x JOIN xpmet.xmatch_run r USING (run_id)
WHERE r.is_current;

DROP TABLE xpmet.xmatch_partitioned;  -- and its partitions
