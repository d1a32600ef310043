-- The inbox of `--inbox postgres://…`: one row per request a worker answered ok, keyed
-- by the worker and the request's courier-message-id, with the SHA-256 of the request's
-- payload (another request under a used id is refused, not answered from the row).
-- Created at start-up, idempotently.
CREATE TABLE IF NOT EXISTS courier_inbox (
    worker         text        NOT NULL,
    message_id     text        NOT NULL,
    content_type   text,
    reply          bytea,
    answered_at    timestamptz NOT NULL DEFAULT now(),
    request_digest bytea,
    PRIMARY KEY (worker, message_id)
);
-- A table from before digests were kept gets the column (ALTER TABLE only then: it needs
-- the table's owner, which a worker's role may not be).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'courier_inbox' AND column_name = 'request_digest') THEN
        ALTER TABLE courier_inbox ADD COLUMN request_digest bytea;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS courier_inbox_answered_at ON courier_inbox (answered_at);
