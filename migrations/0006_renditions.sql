-- Images served at a bounded size (history thumbnails, the record page's annotated
-- image), made once on first request and kept here (service/renditions.py). The key is
-- a hash of what a rendition depends on (image, boxes, size, drawing code); one goes
-- with its original.
CREATE TABLE renditions (
    key          text PRIMARY KEY,
    sha256       text NOT NULL REFERENCES images (sha256) ON DELETE CASCADE,
    content_type text NOT NULL,
    data         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX renditions_sha256_idx ON renditions (sha256);
-- JPEG: compressed already.
ALTER TABLE renditions ALTER COLUMN data SET STORAGE EXTERNAL;
