-- Per pipeline, sandbox and hour (of the event's cursor time, `inserted_at`): how many events
-- were shipped, counted in the same transaction as the checkpoint that passed them. `auditship
-- reconcile` compares these counts with the API's for a window.
CREATE TABLE shipped_hours (
    pipeline    TEXT    NOT NULL,
    resource_id TEXT    NOT NULL,
    -- the hour's start, microseconds since the Unix epoch
    hour_us     INTEGER NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (pipeline, resource_id, hour_us)
);
