//! The ledger: `{"payment": id, "account": a, "amount_cents": n}` → the account's balance
//! after it. Each payment is recorded once, however often the broker delivers it: the
//! entry is written in the idempotent inbox's transaction (`--inbox`), which commits it
//! together with the record that the request was answered.

use courier::{Context, Handler, HandlerError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A payment to record (`schemas/ledger/request.schema.json`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ledger request")]
pub struct Request {
    /// The payment's id (for people; the inbox keys on `courier-message-id`).
    #[schemars(length(min = 1, max = 200))]
    pub payment: String,
    /// The account it is booked to.
    #[schemars(length(min = 1, max = 200))]
    pub account: String,
    /// The amount, in cents (negative for a debit).
    pub amount_cents: i64,
}

/// The account after the payment (`schemas/ledger/reply.schema.json`).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ledger reply")]
pub struct Reply {
    /// The payment recorded.
    pub payment: String,
    /// The account's balance with it, in cents.
    pub balance_cents: i64,
}

/// The name of the ledger's database, for its circuit breaker.
pub const DATABASE: &str = "ledger-db";

/// The ledger's business logic.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ledger;

impl Handler for Ledger {
    type Request = Request;
    type Reply = Reply;

    const NAME: &'static str = "ledger";
    const REQUEST_SCHEMA: &'static str = include_str!("../../../schemas/ledger/request.schema.json");
    const INBOX_SCHEMA: &'static str = include_str!("../schema.sql");

    async fn handle(&self, request: Request, context: &Context) -> Result<Reply, HandlerError> {
        let Some(transaction) = &context.inbox else {
            return Err(HandlerError::permanent("inbox_required", "the ledger runs with --inbox postgres://…"));
        };
        // A value the table refuses is this request's fault, not the database's.
        let database = |error: courier::InboxError| match error.is_refusal() {
            true => HandlerError::permanent("refused_by_database", error),
            false => HandlerError::transient("database", error).dependency(DATABASE),
        };
        transaction
            .execute(
                "INSERT INTO ledger_entries (payment, account, amount_cents) VALUES ($1, $2, $3)",
                &[&request.payment, &request.account, &request.amount_cents],
            )
            .await
            .map_err(database)?;
        let rows = transaction
            .query(
                "SELECT COALESCE(SUM(amount_cents), 0)::bigint FROM ledger_entries WHERE account = $1",
                &[&request.account],
            )
            .await
            .map_err(database)?;
        let balance_cents = rows.first().map_or(0, |row| row.get(0));
        Ok(Reply { payment: request.payment, balance_cents })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/ledger/` is generated from these types; `COURIER_BLESS=1` rewrites it.
    #[test]
    fn schema_files_match_the_rust_types() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/ledger");
        for (file, schema) in [
            ("request.schema.json", schemars::schema_for!(Request)),
            ("reply.schema.json", schemars::schema_for!(Reply)),
        ] {
            let generated = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
            courier::testing::assert_generated_file(&std::path::Path::new(dir).join(file), &generated);
        }
    }

    #[tokio::test]
    async fn without_an_inbox_it_refuses_for_good() {
        let context = Context {
            correlation_id: "c".into(),
            attempt: 1,
            invocation: 1,
            deadline: None,
            source: Default::default(),
            inbox: None,
        };
        let request = Request { payment: "p".into(), account: "a".into(), amount_cents: 1 };
        let error = Ledger.handle(request, &context).await.expect_err("needs the inbox");
        assert!(!error.is_transient());
    }
}
