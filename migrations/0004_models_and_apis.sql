-- Several models, several APIs: each record says which API it came through (our own
-- POST /detect is 'native', the DeepStack-compatible routes 'deepstack'); history and
-- stats filter by model, newest first.

ALTER TABLE detections ADD COLUMN api text NOT NULL DEFAULT 'native';

CREATE INDEX detections_model_created_at_idx ON detections (model, created_at DESC, id DESC);
