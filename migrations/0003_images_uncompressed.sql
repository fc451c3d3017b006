-- Originals are stored out of line and uncompressed: JPEG, PNG and WebP are compressed
-- already, and PostgreSQL's default (pglz) spent about 10 ms per 500 KB JPEG trying to
-- compress one again. Applies to rows written from now on.
ALTER TABLE images ALTER COLUMN data SET STORAGE EXTERNAL;
