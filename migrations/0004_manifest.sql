-- The tamper-evident manifest (see src/manifest.rs): per (pipeline, sink), a hash chain of
-- entries, one per sealed stretch of an archive unit. Entries are inserted in the same
-- transaction as the checkpoint that makes their bytes permanent, then written next to the data;
-- `published` says whether that has happened (the next start publishes what a crash left).
CREATE TABLE manifest (
    pipeline     TEXT    NOT NULL,
    sink         TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    unit         TEXT    NOT NULL,
    -- the stretch, in bytes of the unit: [offset_bytes, end_bytes)
    offset_bytes INTEGER NOT NULL,
    end_bytes    INTEGER NOT NULL,
    hash         TEXT    NOT NULL,
    -- the entry as published: one JSON line
    line         TEXT    NOT NULL,
    published    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pipeline, sink, seq)
);
CREATE INDEX manifest_by_unit ON manifest (pipeline, sink, unit, end_bytes);
CREATE INDEX manifest_unpublished ON manifest (pipeline, sink, published);
