-- Signed digests (see src/manifest/digest.rs): per (pipeline, sink), one per period, listing the
-- manifest entries committed in it, chained and signed with Ed25519. Only the signed digest is
-- kept here, never the key. `published` says whether it has been written beside the manifests
-- (the next start writes what a crash left).
CREATE TABLE digests (
    pipeline   TEXT    NOT NULL,
    sink       TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    -- the digest's last manifest entry (its `through`)
    through    INTEGER NOT NULL,
    -- the digest as published: one JSON document
    body       TEXT    NOT NULL,
    published  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pipeline, sink, seq)
);
CREATE INDEX digests_unpublished ON digests (pipeline, sink, published);
