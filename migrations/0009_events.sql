-- Events (service/events/): what a record is sent to, written in the record's own
-- transaction so that a crash after the answer cannot lose it.

-- Where a record's image came from (a camera's name: ?source=camera-3); NULL: not said.
ALTER TABLE detections ADD COLUMN source text;

-- Rules added through PUT /api/events/{name} (those of the config file are not here).
CREATE TABLE event_rules (
    name       text PRIMARY KEY,
    rule       jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per (rule, record) to deliver; deleted once delivered. A row whose tries ran
-- out keeps dead_at set (and its last error) until the rule is deleted.
CREATE TABLE event_outbox (
    id         bigserial PRIMARY KEY,  -- the order of delivery per target
    target     text NOT NULL,          -- the rule's name
    record_id  uuid NOT NULL,
    payload    jsonb NOT NULL,         -- the webhook's body, the MQTT message
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts   integer NOT NULL DEFAULT 0,
    next_at    timestamptz NOT NULL DEFAULT now(),
    last_error text,
    dead_at    timestamptz
);

-- The head of each target's queue; the dead ones apart.
CREATE INDEX event_outbox_pending_idx ON event_outbox (target, id) WHERE dead_at IS NULL;
CREATE INDEX event_outbox_dead_idx ON event_outbox (target, id) WHERE dead_at IS NOT NULL;

-- changes_only rules: the labels last sent per (rule, source).
CREATE TABLE event_sources (
    target text NOT NULL,
    source text NOT NULL,  -- '' for records without a source
    labels text[] NOT NULL,
    PRIMARY KEY (target, source)
);
