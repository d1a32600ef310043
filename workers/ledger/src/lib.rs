//! The ledger: `{"payment": id, "account": a, "amount_cents": n}` → the account's balance
//! after it. Each payment is recorded once, however often the broker delivers it: the
//! entries are written in the idempotent inbox's transaction (`--inbox`), which commits
//! them together with the record that their requests were answered.
//!
//! A batch handler: with `--batch-size` it records a whole batch with one multi-row insert
//! in the batch's one transaction; without, each request is a batch of one.

use std::collections::HashMap;

use courier::{BatchHandler, BatchResult, Context, HandlerError};
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

impl BatchHandler for Ledger {
    type Request = Request;
    type Reply = Reply;

    const NAME: &'static str = "ledger";
    const REQUEST_SCHEMA: &'static str = include_str!("../../../schemas/ledger/request.schema.json");
    const INBOX_SCHEMA: &'static str = include_str!("../schema.sql");

    /// Each payment's balance is the account's balance before the batch plus the batch's
    /// earlier payments to it, summed here in 128 bits, and text with a NUL never reaches
    /// a statement: no request can make the database refuse a statement the whole batch
    /// shares. A request failed here writes nothing (what a batch handler writes commits
    /// with the batch, whatever that request's result).
    async fn handle_batch(&self, batch: Vec<(Request, Context)>) -> BatchResult<Reply> {
        let Some(transaction) = batch.first().and_then(|(_, context)| context.inbox.clone()) else {
            return Err(HandlerError::permanent("inbox_required", "the ledger runs with --inbox postgres://…"));
        };
        // Text PostgreSQL refuses (a NUL) is its request's fault: kept out of every statement.
        let storable = |request: &Request| ![&request.payment, &request.account].iter().any(|t| t.contains('\0'));
        let mut accounts: Vec<&str> = batch
            .iter()
            .filter(|(request, _)| storable(request))
            .map(|(request, _)| request.account.as_str())
            .collect();
        accounts.sort_unstable();
        accounts.dedup();
        let rows = transaction
            .query(
                "SELECT account, SUM(amount_cents)::text FROM ledger_entries WHERE account = ANY($1) GROUP BY account",
                &[&accounts],
            )
            .await
            .map_err(database)?;
        let mut balances: HashMap<String, i128> = HashMap::new();
        for row in rows {
            let sum: String = row.get(1);
            balances.insert(row.get(0), sum.parse().map_err(|_| HandlerError::permanent("bad_sum", sum))?);
        }
        let (mut payments, mut booked_accounts, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
        let results: Vec<Result<Reply, HandlerError>> = batch
            .iter()
            .map(|(request, _)| {
                if !storable(request) {
                    return Err(HandlerError::permanent("refused_by_database", "text with a NUL byte"));
                }
                let balance = balances.get(&request.account).copied().unwrap_or(0) + i128::from(request.amount_cents);
                let balance_cents = i64::try_from(balance).map_err(|_| {
                    HandlerError::permanent("balance_out_of_range", "the balance would not fit 64 bits")
                })?;
                balances.insert(request.account.clone(), balance);
                payments.push(request.payment.as_str());
                booked_accounts.push(request.account.as_str());
                amounts.push(request.amount_cents);
                Ok(Reply { payment: request.payment.clone(), balance_cents })
            })
            .collect();
        if !payments.is_empty() {
            transaction
                .execute(
                    "INSERT INTO ledger_entries (payment, account, amount_cents) \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
                    &[&payments, &booked_accounts, &amounts],
                )
                .await
                .map_err(database)?;
        }
        Ok(results)
    }
}

/// The database failed the batch: the database's health (transient), or, when it refused
/// a value, the batch's data (permanent).
fn database(error: courier::InboxError) -> HandlerError {
    match error.is_refusal() {
        true => HandlerError::permanent("refused_by_database", error),
        false => HandlerError::transient("database", error).dependency(DATABASE),
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
        let error = Ledger.handle_batch(vec![(request, context)]).await.expect_err("needs the inbox");
        assert!(!error.is_transient());
    }
}
