-- Reviews: what a person says is in an image, stored beside the model's output (the
-- detections row is never changed). One row per reviewed record, replaced when it is
-- reviewed again (service/review.py); it goes with its record.
--
-- boxes: [{"label": "stop", "box": {"x1", "y1", "x2", "y2"}, "detection": 0}, ...] in
-- the record's pixels; "detection" is the index of the model's box it confirms or
-- relabels, absent for a box the person drew. An empty array: nothing there.
CREATE TABLE reviews (
    detection_id uuid PRIMARY KEY REFERENCES detections (id) ON DELETE CASCADE,
    boxes        jsonb NOT NULL CHECK (jsonb_typeof(boxes) = 'array'),
    num_boxes    integer NOT NULL CHECK (num_boxes >= 0),
    reviewer     text,            -- the token's name; NULL with access control off
    reviewed_at  timestamptz NOT NULL
);

-- The "least confident first" order of the history (db.history_query): records by their
-- best confidence, those without boxes last, read in order from this index.
CREATE INDEX detections_least_confident_idx
    ON detections ((coalesce(max_confidence, 2.0)), id);
