-- The history filters that history_counts cannot answer (min_confidence without a label,
-- and the per-label counts of any record set) count from the rows: covering indexes let
-- them read index entries instead of the records' wide rows (jsonb boxes).
CREATE INDEX detections_max_confidence_idx ON detections (max_confidence)
    INCLUDE (id, created_at, created_day, num_detections, model);
CREATE INDEX detection_labels_detection_id_idx ON detection_labels (detection_id)
    INCLUDE (label, boxes);
-- A label filter's records joined to their detections rows: index-only probes by id.
CREATE UNIQUE INDEX detections_id_cover_idx ON detections (id)
    INCLUDE (created_day, num_detections, model, max_confidence);
