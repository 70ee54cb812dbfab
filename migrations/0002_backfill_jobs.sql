-- Named backfill jobs (`auditship backfill --job NAME`): the window a job started with and
-- whether it finished. A rerun of an unfinished job resumes that window (its progress is the
-- checkpoint stream 'job:<name>'); a rerun of a finished one does nothing.
CREATE TABLE backfill_jobs (
    pipeline       TEXT    NOT NULL,
    job            TEXT    NOT NULL,
    -- the window, microseconds since the Unix epoch, both inclusive; fixed at the first run
    since_us       INTEGER NOT NULL,
    until_us       INTEGER NOT NULL,
    -- JSON array of the sandboxes the job covers
    sandboxes      TEXT    NOT NULL,
    started_at_us  INTEGER NOT NULL,
    finished_at_us INTEGER,
    PRIMARY KEY (pipeline, job)
);
