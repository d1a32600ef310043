//! A batch's inbox (`--batch-size` with `--inbox`): one transaction claims the message ids
//! of the batch's requests, holds the handler's writes for all of them, and commits the
//! replies of those that passed while it releases the claims of those that failed (their
//! retries claim anew). Per batch, not per request: a claim's round trip, and a commit's.
//!
//! A failed request's claim is deleted rather than rolled back to a savepoint: savepoints
//! nest, so rolling back to one request's would undo every request claimed after it.

use std::collections::{HashMap, HashSet};

use tokio_postgres::{Client, Statement, types::ToSql};

use super::{Connection, Inbox, InboxError, Open, Stored, Transaction, answered, request};

/// What the batch's claim found for one of its requests.
#[derive(Debug)]
pub(crate) enum BatchClaim {
    /// Claimed by this batch's transaction.
    Mine,
    /// No message id: handled in the transaction, nothing claimed.
    Unkeyed,
    /// This request was answered before: the stored reply.
    Answered(Stored),
    /// Another request (another payload) was answered under this message id.
    Reused,
    /// An earlier request of the same batch has the same message id: it claims it.
    Twin,
}

/// The prepared statements of a batch, per connection.
pub(super) struct Statements {
    claim: Statement,
    stored: Statement,
    store: Statement,
    release: Statement,
}

impl Statements {
    pub(super) async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let (claim, stored, store, release) = tokio::try_join!(
            client.prepare(
                "INSERT INTO courier_inbox (worker, message_id, request_digest) \
                 SELECT $1, claim.id, claim.digest FROM unnest($2::text[], $3::bytea[]) AS claim(id, digest) \
                 ON CONFLICT DO NOTHING RETURNING message_id"
            ),
            client.prepare(
                "SELECT content_type, reply, request_digest, message_id FROM courier_inbox \
                 WHERE worker = $1 AND message_id = ANY($2::text[])"
            ),
            client.prepare(
                "UPDATE courier_inbox AS inbox SET content_type = answer.content_type, reply = answer.payload, \
                 answered_at = now() FROM unnest($2::text[], $3::text[], $4::bytea[]) AS answer(id, content_type, payload) \
                 WHERE inbox.worker = $1 AND inbox.message_id = answer.id"
            ),
            client.prepare("DELETE FROM courier_inbox WHERE worker = $1 AND message_id = ANY($2::text[])"),
        )?;
        Ok(Self { claim, stored, store, release })
    }
}

impl Inbox {
    /// Begin a batch's transaction and claim the message ids of its requests, given as
    /// (message id, payload); an empty id is a request without one. Ids are claimed in
    /// sorted order, so two batches claiming some of the same ids cannot deadlock.
    pub(crate) async fn claim_batch(
        &self,
        keys: &[(&str, &[u8])],
    ) -> Result<(Transaction, Vec<BatchClaim>), InboxError> {
        let worker = &self.shared.worker;
        let digests: Vec<[u8; 32]> = keys.iter().map(|(_, payload)| request::digest(payload)).collect();
        let mut firsts: HashMap<&str, usize> = HashMap::new();
        for (at, (id, _)) in keys.iter().enumerate() {
            if !id.is_empty() {
                firsts.entry(id).or_insert(at);
            }
        }
        let mut order: Vec<(&str, usize)> = firsts.iter().map(|(id, at)| (*id, *at)).collect();
        order.sort_unstable();
        let ids: Vec<&str> = order.iter().map(|(id, _)| *id).collect();
        let claim_digests: Vec<&[u8]> = order.iter().map(|(_, at)| &digests[*at][..]).collect();
        let checkout = self.shared.take().await?;
        let claim: [&(dyn ToSql + Sync); 3] = [worker, &ids, &claim_digests];
        let (checkout, rows) = self
            .shared
            .within(checkout, async |c: &Connection| {
                let ((), rows) =
                    tokio::try_join!(c.client.batch_execute("BEGIN"), c.client.query(&c.batch.claim, &claim))?;
                Ok(rows)
            })
            .await?;
        let mine: HashSet<String> = rows.iter().map(|row| row.get(0)).collect();
        let others: Vec<&str> = ids.iter().copied().filter(|id| !mine.contains(*id)).collect();
        let (checkout, stored) = if others.is_empty() {
            (checkout, HashMap::new())
        } else {
            let key: [&(dyn ToSql + Sync); 2] = [worker, &others];
            let (checkout, rows) = self
                .shared
                .within(checkout, async |c: &Connection| c.client.query(&c.batch.stored, &key).await)
                .await?;
            let stored: HashMap<String, tokio_postgres::Row> = rows.into_iter().map(|row| (row.get(3), row)).collect();
            (checkout, stored)
        };
        let claims = keys
            .iter()
            .enumerate()
            .map(|(at, (id, _))| {
                if id.is_empty() {
                    return BatchClaim::Unkeyed;
                }
                if firsts.get(id) != Some(&at) {
                    return BatchClaim::Twin;
                }
                if mine.contains(*id) {
                    return BatchClaim::Mine;
                }
                // Gone since the claim saw it (expired meanwhile): asked again, as a twin is.
                let Some(row) = stored.get(*id) else { return BatchClaim::Twin };
                answered(row, &digests[at]).map_or(BatchClaim::Reused, BatchClaim::Answered)
            })
            .collect();
        let shared = std::sync::Arc::clone(&self.shared);
        let open = Open { checkout: Some(checkout), busy: false, shared, message_id: String::new() };
        Ok((Transaction(std::sync::Arc::new(tokio::sync::Mutex::new(open))), claims))
    }
}

impl Transaction {
    /// A batch's end, in one round trip: store the replies `stored` (by message id),
    /// release the claims `released`, and commit. A statement of the handler that failed
    /// aborted the transaction: then this fails, and nothing is committed.
    pub(crate) async fn commit_batch(
        &self,
        stored: &[(String, Stored)],
        released: &[String],
    ) -> Result<(), InboxError> {
        let mut open = self.0.lock().await;
        let worker = open.shared.worker.clone();
        let ids: Vec<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
        let types: Vec<&str> = stored.iter().map(|(_, reply)| reply.content_type.as_str()).collect();
        let payloads: Vec<&[u8]> = stored.iter().map(|(_, reply)| &reply.payload[..]).collect();
        let store: [&(dyn ToSql + Sync); 4] = [&worker, &ids, &types, &payloads];
        let release: [&(dyn ToSql + Sync); 2] = [&worker, &released];
        open.run(async |c: &Connection| {
            let release =
                async { if released.is_empty() { Ok(0) } else { c.client.execute(&c.batch.release, &release).await } };
            // Always one statement before the commit: an aborted transaction's COMMIT
            // rolls back without an error, a statement in it fails.
            let store = async {
                if stored.is_empty() && !released.is_empty() {
                    Ok(0)
                } else {
                    c.client.execute(&c.batch.store, &store).await
                }
            };
            tokio::try_join!(release, store, c.client.batch_execute("COMMIT")).map(|_| ())
        })
        .await?;
        open.finish();
        Ok(())
    }
}
