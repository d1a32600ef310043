-- The ledger's own table, written in the inbox's transaction (created at start-up).
-- No unique key on `payment` on purpose: that each payment is recorded once is the
-- inbox's promise, and the tests count the rows to check it.
CREATE TABLE IF NOT EXISTS ledger_entries (
    payment      text        NOT NULL,
    account      text        NOT NULL,
    amount_cents bigint      NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ledger_entries_account ON ledger_entries (account);
