-- Counts for the history page and /api/stats, so that the per-label and per-day counts
-- under a label, model or date filter read a few hundred rows instead of aggregating
-- every record (100,000 records: 60-330 ms from the rows; bench.history_query).
--
-- One row per (UTC day, model, having_label, label):
--   having_label = ''  : every record of that day and model
--   having_label = 'x' : the records with at least one box labelled 'x'
--   label = ''         : those records themselves (records; boxes = all their boxes)
--   label = 'y'        : their boxes labelled 'y' (records = how many of them have one)
-- Labels are never '' (names files have no empty names).
--
-- Writes only append: a trigger on detections adds rows to history_count_deltas (no
-- row is updated, so concurrent inserts never wait on each other's counters), and
-- history_counts_compact() folds them into history_counts now and then
-- (service/counts.py). Readers sum both tables.

CREATE TABLE history_counts (
    day          date NOT NULL,
    model        text NOT NULL,
    having_label text NOT NULL,
    label        text NOT NULL,
    records      bigint NOT NULL,
    boxes        bigint NOT NULL,
    PRIMARY KEY (having_label, day, model, label)
);

CREATE TABLE history_count_deltas (
    day          date NOT NULL,
    model        text NOT NULL,
    having_label text NOT NULL,
    label        text NOT NULL,
    records      bigint NOT NULL,
    boxes        bigint NOT NULL
);

-- The rows of the records a statement inserted (or, with -1, deleted), from the boxes
-- in their jsonb column: it holds every box, so no other table is needed. Two functions
-- because a transition table cannot be passed on.
CREATE FUNCTION history_counts_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH per_label AS (
        SELECT r.id, r.created_day, r.model, r.num_detections, e.value ->> 'label' AS label,
               count(*) AS boxes
        FROM new_rows r, jsonb_array_elements(r.detections) AS e
        GROUP BY 1, 2, 3, 4, 5
    )
    INSERT INTO history_count_deltas (day, model, having_label, label, records, boxes)
    SELECT created_day, model, '', '', 1, num_detections FROM new_rows
    UNION ALL SELECT created_day, model, '', label, 1, boxes FROM per_label
    UNION ALL SELECT created_day, model, label, '', 1, num_detections FROM per_label
    UNION ALL SELECT h.created_day, h.model, h.label, y.label, 1, y.boxes
              FROM per_label h JOIN per_label y ON y.id = h.id;
    RETURN NULL;
END
$$;

CREATE FUNCTION history_counts_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH per_label AS (
        SELECT r.id, r.created_day, r.model, r.num_detections, e.value ->> 'label' AS label,
               count(*) AS boxes
        FROM old_rows r, jsonb_array_elements(r.detections) AS e
        GROUP BY 1, 2, 3, 4, 5
    )
    INSERT INTO history_count_deltas (day, model, having_label, label, records, boxes)
    SELECT created_day, model, '', '', -1, -num_detections FROM old_rows
    UNION ALL SELECT created_day, model, '', label, -1, -boxes FROM per_label
    UNION ALL SELECT created_day, model, label, '', -1, -num_detections FROM per_label
    UNION ALL SELECT h.created_day, h.model, h.label, y.label, -1, -y.boxes
              FROM per_label h JOIN per_label y ON y.id = h.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER detections_history_counts_insert
    AFTER INSERT ON detections REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION history_counts_inserted();
CREATE TRIGGER detections_history_counts_delete
    AFTER DELETE ON detections REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION history_counts_deleted();

-- Fold the deltas into history_counts; returns how many delta rows it took. Safe to run
-- concurrently (a delta row is deleted, and so counted, once; keys are upserted in
-- order, so two runs cannot deadlock).
CREATE FUNCTION history_counts_compact() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    WITH gone AS (
        DELETE FROM history_count_deltas RETURNING *
    ), summed AS (
        SELECT having_label, day, model, label, sum(records) AS records, sum(boxes) AS boxes,
               count(*) AS n
        FROM gone GROUP BY having_label, day, model, label
    ), upserted AS (
        INSERT INTO history_counts AS c (day, model, having_label, label, records, boxes)
        SELECT day, model, having_label, label, records, boxes FROM summed
        ORDER BY having_label, day, model, label
        ON CONFLICT (having_label, day, model, label) DO UPDATE
            SET records = c.records + EXCLUDED.records, boxes = c.boxes + EXCLUDED.boxes
    )
    SELECT coalesce(sum(n), 0) INTO moved FROM summed;
    RETURN moved;
END
$$;

-- The records written before this migration.
WITH per_label AS (
    SELECT r.id, r.created_day, r.model, r.num_detections, e.value ->> 'label' AS label,
           count(*) AS boxes
    FROM detections r, jsonb_array_elements(r.detections) AS e
    GROUP BY 1, 2, 3, 4, 5
)
INSERT INTO history_count_deltas (day, model, having_label, label, records, boxes)
SELECT created_day, model, '', '', 1, num_detections FROM detections
UNION ALL SELECT created_day, model, '', label, 1, boxes FROM per_label
UNION ALL SELECT created_day, model, label, '', 1, num_detections FROM per_label
UNION ALL SELECT h.created_day, h.model, h.label, y.label, 1, y.boxes
          FROM per_label h JOIN per_label y ON y.id = h.id;
SELECT history_counts_compact();
