-- Filename substring filters (ILIKE '%...%') use a trigram index where pg_trgm is
-- available (it ships with the embedded server; it is a trusted extension, so a
-- database owner may create it). Without it the filter still works, by scanning.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX detections_filename_trgm_idx
            ON detections USING gin (filename gin_trgm_ops);
    END IF;
END
$$;
