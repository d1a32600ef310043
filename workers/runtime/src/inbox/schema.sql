-- The inbox of `--inbox postgres://…`: one row per request a worker answered ok, keyed
-- by the worker and the request's courier-message-id. Created at start-up, idempotently.
CREATE TABLE IF NOT EXISTS courier_inbox (
    worker       text        NOT NULL,
    message_id   text        NOT NULL,
    content_type text,
    reply        bytea,
    answered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker, message_id)
);
CREATE INDEX IF NOT EXISTS courier_inbox_answered_at ON courier_inbox (answered_at);
