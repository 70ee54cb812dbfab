-- Per (pipeline, stream, sandbox): the position shipped so far.
-- stream is 'live' for `auditship run`, 'backfill:<since>:<until>' for a backfill window, so a
-- backfill never moves a live checkpoint.
CREATE TABLE checkpoints (
    pipeline       TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    resource_id    TEXT    NOT NULL,
    -- the id of the last event shipped (for people; resuming uses cursor_us + tie_ids)
    last_event_id  TEXT,
    -- newest cursor time shipped, microseconds since the Unix epoch
    cursor_us      INTEGER,
    -- the same time as the server spelled it; sent back as `since` on resume
    cursor_text    TEXT,
    -- JSON array of every id shipped at exactly cursor_us (several events share a timestamp)
    tie_ids        TEXT    NOT NULL DEFAULT '[]',
    events_shipped INTEGER NOT NULL DEFAULT 0,
    updated_at_us  INTEGER NOT NULL,
    PRIMARY KEY (pipeline, stream, resource_id)
);

-- Facts a sink commits atomically with the checkpoint (the file sink: each file's durable length).
CREATE TABLE sink_state (
    pipeline TEXT    NOT NULL,
    sink     TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    value    INTEGER NOT NULL,
    PRIMARY KEY (pipeline, sink, key)
);
