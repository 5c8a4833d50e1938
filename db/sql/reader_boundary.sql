-- Placeholder: filled in by the reader-boundary work.
SELECT 1;
