//! The idempotent inbox (`--inbox postgres://…`): a request is processed once per
//! `courier-message-id`, whatever the broker redelivers.
//!
//! Per request, one database transaction: it claims the message id (an insert that waits
//! for any other worker holding the same id), the handler runs inside it
//! ([`crate::Context::inbox`]: its own writes commit with the claim), and it commits with
//! the encoded reply *before* the reply is published. A request that comes again finds
//! the committed row and is answered from it, without the handler — if it is the same
//! request: the row keeps the digest of the request's payload, and another request under
//! a used id gets [`Claim::Reused`], never the stored reply. A failed round rolls back (the
//! handler's writes too) and takes the usual retry and dead-letter path.
//!
//! Bounded: at most `connections` connections (a request waits for one, as it would for a
//! handler slot), and every call — connecting, the claim, each of the handler's
//! statements, the commit — answers within `timeout` or fails with
//! [`InboxError::Timeout`]. A call cut short leaves its connection in an unknown state:
//! the server is asked to cancel what it runs, the connection is closed (the server
//! rolls the transaction back) and the request's transaction is over.

mod batch;
mod request;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

pub(crate) use batch::BatchClaim;
pub use request::MAX_MESSAGE_ID_BYTES;
pub(crate) use request::message_id_problem;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Row, Statement, types::ToSql};

/// The inbox's name as a dependency, for its circuit breaker.
pub(crate) const DEPENDENCY: &str = "inbox";
/// The inbox table, created at start-up.
const SCHEMA: &str = include_str!("schema.sql");
/// Set right after the claim; a failed handler call is rolled back to it.
const SAVEPOINT: &str = "SAVEPOINT courier_call";
/// Serialises start-up migrations of workers starting together (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x0063_6f75_7269_6572;
/// How long asking the server to cancel an abandoned call may take.
const CANCEL_BOUND: Duration = Duration::from_secs(2);

/// The inbox failed: the database is unreachable or slow, or a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// A database error.
    #[error("inbox database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The database did not answer within the inbox's bound (`--inbox-timeout`).
    #[error("the inbox database did not answer within {0:?}")]
    Timeout(Duration),
    /// The transaction was already committed, rolled back or abandoned.
    #[error("the inbox transaction is over")]
    Finished,
}

impl InboxError {
    /// The request caused it (a value the database cannot store, a constraint it
    /// violates): not a sign of the database's health.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Database(error) => error.code().is_some_and(|code| request::caused_by_request(code.code())),
            Self::Timeout(_) | Self::Finished => false,
        }
    }
}

/// A worker's inbox: its database and a bounded pool of connections.
#[derive(Clone)]
pub(crate) struct Inbox {
    shared: Arc<Shared>,
}

struct Shared {
    config: tokio_postgres::Config,
    worker: String,
    /// Each call's bound.
    timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection in use: connections in use and idle never exceed its size.
    slots: Arc<Semaphore>,
}

/// A pooled connection and its statements, prepared once (a statement given as text is
/// parsed on every call: a round trip more).
struct Connection {
    client: Client,
    claim: Statement,
    stored: Statement,
    store: Statement,
    /// A batch's statements (`batch.rs`).
    batch: batch::Statements,
}

/// A connection in use, with its place in the pool.
struct Checkout {
    connection: Connection,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("worker", &self.shared.worker).finish_non_exhaustive()
    }
}

/// What a claim found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// This request was answered before: the stored reply.
    Answered(Stored),
    /// Another request (another payload) was answered under this message id.
    Reused,
    /// Not answered yet: this transaction holds the message id until it ends.
    Mine(Transaction),
}

/// A reply as the inbox stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The reply's `content-type`.
    pub content_type: String,
    /// The reply's payload.
    pub payload: Vec<u8>,
}

/// The inbox's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// How long any one call may take (`--inbox-timeout`).
    pub timeout: Duration,
    /// Connections at most (`--inbox-connections`).
    pub connections: usize,
}

impl Inbox {
    /// Connect to `url` (`postgres://user@host:port/db`), create the inbox table and run
    /// `handler_schema` (the handler's own tables, [`crate::Handler::INBOX_SCHEMA`]).
    pub(crate) async fn connect(
        url: &str,
        worker: &str,
        handler_schema: &str,
        bounds: Bounds,
    ) -> Result<Self, InboxError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        config.connect_timeout(bounds.timeout);
        let slots = Arc::new(Semaphore::new(bounds.connections.max(1)));
        let shared = Arc::new(Shared {
            config,
            worker: worker.to_owned(),
            timeout: bounds.timeout,
            idle: Mutex::new(Vec::new()),
            slots,
        });
        let migration =
            format!("BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); {SCHEMA}\n{handler_schema}\n; COMMIT;");
        // Other workers may be migrating: a few of the bound.
        let migrated = tokio::time::timeout(bounds.timeout * 4, async {
            let client = shared.connect().await?;
            client.batch_execute(&migration).await?;
            Connection::prepare(client).await
        })
        .await
        .map_err(|_| InboxError::Timeout(bounds.timeout * 4))??;
        shared.idle.lock().unwrap_or_else(|p| p.into_inner()).push(migrated);
        Ok(Self { shared })
    }

    /// Claim `message_id` for the request whose payload is `request`:
    /// [`Claim::Answered`] with the stored reply if a worker answered it already,
    /// [`Claim::Reused`] if it answered another request under that id, else a transaction
    /// that holds it (another worker claiming the same id waits until this one ends).
    pub(crate) async fn claim(&self, message_id: &str, request: &[u8]) -> Result<Claim, InboxError> {
        let worker = &self.shared.worker;
        let digest = request::digest(request);
        let checkout = self.shared.take().await?;
        let claim: [&(dyn ToSql + Sync); 3] = [worker, &message_id, &&digest[..]];
        // One round trip: futures polled together are pipelined, in order. The savepoint
        // after the claim is where a failed handler call's writes are rolled back to
        // (it stays established after a rollback to it).
        let (checkout, inserted) = self
            .shared
            .within(checkout, async |c: &Connection| {
                let (_, inserted, ()) = tokio::try_join!(
                    c.client.batch_execute("BEGIN"),
                    c.client.execute(&c.claim, &claim),
                    c.client.batch_execute(SAVEPOINT),
                )?;
                Ok(inserted)
            })
            .await?;
        if inserted == 1 {
            let shared = Arc::clone(&self.shared);
            let open = Open { checkout: Some(checkout), busy: false, shared, message_id: message_id.to_owned() };
            return Ok(Claim::Mine(Transaction(Arc::new(tokio::sync::Mutex::new(open)))));
        }
        let key: [&(dyn ToSql + Sync); 2] = [worker, &message_id];
        let (checkout, row) = self
            .shared
            .within(checkout, async |c: &Connection| {
                let (row, ()) =
                    tokio::try_join!(c.client.query_one(&c.stored, &key), c.client.batch_execute("ROLLBACK"))?;
                Ok(row)
            })
            .await?;
        self.shared.give_back(checkout);
        Ok(answered(&row, &digest).map_or(Claim::Reused, Claim::Answered))
    }

    /// Remove the rows of this worker answered longer ago than `age`; how many.
    pub(crate) async fn remove_older_than(&self, age: Duration) -> Result<u64, InboxError> {
        let checkout = self.shared.take().await?;
        let worker = &self.shared.worker;
        let (checkout, removed) = self
            .shared
            .within(checkout, async |c: &Connection| {
                c.client
                    .execute(
                        "DELETE FROM courier_inbox WHERE worker = $1 AND answered_at < now() - make_interval(secs => $2)",
                        &[worker, &age.as_secs_f64()],
                    )
                    .await
            })
            .await?;
        self.shared.give_back(checkout);
        Ok(removed)
    }
}

/// The stored reply of a message id answered before (a row whose first columns are
/// `content_type, reply, request_digest`), for the request whose payload has `digest`;
/// `None` when another request was answered under the id. A row from before digests were
/// kept has none: taken as the same request.
fn answered(row: &Row, digest: &[u8]) -> Option<Stored> {
    let stored_digest: Option<Vec<u8>> = row.get(2);
    if stored_digest.is_some_and(|stored| stored != digest) {
        return None;
    }
    let content_type: Option<String> = row.get(0);
    let payload: Option<Vec<u8>> = row.get(1);
    Some(Stored { content_type: content_type.unwrap_or_default(), payload: payload.unwrap_or_default() })
}

impl Shared {
    /// An idle connection, or a new one, once a slot of the pool is free.
    async fn take(&self) -> Result<Checkout, InboxError> {
        let slot = Arc::clone(&self.slots).acquire_owned().await.expect("the semaphore is never closed");
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(connection) if connection.client.is_closed() => continue,
                Some(connection) => return Ok(Checkout { connection, _slot: slot }),
                None => break,
            }
        }
        let connection = tokio::time::timeout(self.timeout, async { Connection::prepare(self.connect().await?).await })
            .await
            .map_err(|_| InboxError::Timeout(self.timeout))??;
        Ok(Checkout { connection, _slot: slot })
    }

    async fn connect(&self) -> Result<Client, InboxError> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "Inbox database connection ended.");
            }
        });
        Ok(client)
    }

    /// Run `call` on a checked-out connection within the bound. On an error the
    /// connection is closed (the server rolls back what it began); on a timeout it is
    /// abandoned ([`Checkout::abandon`]).
    async fn within<T>(
        &self,
        checkout: Checkout,
        call: impl AsyncFnOnce(&Connection) -> Result<T, tokio_postgres::Error>,
    ) -> Result<(Checkout, T), InboxError> {
        match tokio::time::timeout(self.timeout, call(&checkout.connection)).await {
            Ok(Ok(value)) => Ok((checkout, value)),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => {
                checkout.abandon();
                Err(InboxError::Timeout(self.timeout))
            }
        }
    }

    fn give_back(&self, checkout: Checkout) {
        if !checkout.connection.client.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(checkout.connection);
        }
    }
}

impl Checkout {
    /// Give up on a connection whose call did not finish: ask the server to cancel it (it
    /// may be waiting on a lock), then close it; the server rolls its transaction back.
    fn abandon(self) {
        let cancel = self.connection.client.cancel_token();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Bounded, and owned by nothing else: it ends by itself.
            runtime.spawn(async move {
                let _ = tokio::time::timeout(CANCEL_BOUND, cancel.cancel_query(NoTls)).await;
            });
        }
    }
}

impl Connection {
    async fn prepare(client: Client) -> Result<Self, InboxError> {
        let (claim, stored, store) = tokio::try_join!(
            client.prepare(
                "INSERT INTO courier_inbox (worker, message_id, request_digest) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING"
            ),
            client.prepare(
                "SELECT content_type, reply, request_digest FROM courier_inbox WHERE worker = $1 AND message_id = $2"
            ),
            client.prepare(
                "UPDATE courier_inbox SET content_type = $3, reply = $4, answered_at = now() \
                 WHERE worker = $1 AND message_id = $2"
            ),
        )?;
        let batch = batch::Statements::prepare(&client).await?;
        Ok(Self { client, claim, stored, store, batch })
    }
}

/// The open database transaction of one request, for the handler's own statements
/// ([`crate::Context::inbox`]): what it writes commits together with the inbox row, or
/// not at all.
#[derive(Clone)]
pub struct Transaction(Arc<tokio::sync::Mutex<Open>>);

struct Open {
    /// `None` once committed, rolled back or abandoned.
    checkout: Option<Checkout>,
    /// A call is under way. Still set when the next call comes, the last one was cut
    /// short (its future dropped: the handler's timeout) and the connection's state is
    /// unknown: the transaction is abandoned.
    busy: bool,
    shared: Arc<Shared>,
    message_id: String,
}

impl Drop for Open {
    /// A transaction neither committed nor rolled back (its future was dropped): its
    /// connection is closed, never pooled, and the server rolls it back.
    fn drop(&mut self) {
        if let Some(checkout) = self.checkout.take()
            && self.busy
        {
            checkout.abandon();
        }
    }
}

impl Open {
    /// Run `call` in the transaction within the inbox's bound; a call that does not
    /// answer in time, or one after a call cut short, abandons the transaction.
    async fn run<T>(
        &mut self,
        call: impl AsyncFnOnce(&Connection) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, InboxError> {
        if self.busy {
            self.abandon();
            return Err(InboxError::Finished);
        }
        let checkout = self.checkout.as_ref().ok_or(InboxError::Finished)?;
        self.busy = true;
        let outcome = tokio::time::timeout(self.shared.timeout, call(&checkout.connection)).await;
        self.busy = false;
        match outcome {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.abandon();
                Err(InboxError::Timeout(self.shared.timeout))
            }
        }
    }

    fn abandon(&mut self) {
        self.busy = false;
        if let Some(checkout) = self.checkout.take() {
            checkout.abandon();
        }
    }

    /// The connection back to the pool: the transaction is over.
    fn finish(&mut self) {
        if let Some(checkout) = self.checkout.take() {
            self.shared.give_back(checkout);
        }
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("inbox::Transaction")
    }
}

impl Transaction {
    /// Run a statement in the transaction; the rows it changed.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, InboxError> {
        self.0.lock().await.run(async |c: &Connection| c.client.execute(sql, params).await).await
    }

    /// Run a query in the transaction.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, InboxError> {
        self.0.lock().await.run(async |c: &Connection| c.client.query(sql, params).await).await
    }

    /// Set the savepoint a failed call is rolled back to ([`Self::undo_call`]): in a batch's
    /// transaction, before each request a handler handles on its own.
    pub(crate) async fn savepoint(&self) -> Result<(), InboxError> {
        self.0.lock().await.run(async |c: &Connection| c.client.batch_execute(SAVEPOINT).await).await
    }

    /// Undo what a failed handler call wrote: back to the savepoint after the claim.
    /// Fails when the transaction is over (a call cut short or timed out abandoned it).
    pub(crate) async fn undo_call(&self) -> Result<(), InboxError> {
        self.0
            .lock()
            .await
            .run(async |c: &Connection| c.client.batch_execute("ROLLBACK TO SAVEPOINT courier_call").await)
            .await
    }

    /// Store the reply and commit, in one round trip: from now on the request is
    /// answered from the inbox.
    pub(crate) async fn commit(&self, stored: &Stored) -> Result<(), InboxError> {
        let mut open = self.0.lock().await;
        let message_id = open.message_id.clone();
        let worker = open.shared.worker.clone();
        let row: [&(dyn ToSql + Sync); 4] = [&worker, &message_id, &stored.content_type, &stored.payload];
        open.run(async |c: &Connection| {
            tokio::try_join!(c.client.execute(&c.store, &row), c.client.batch_execute("COMMIT")).map(|_| ())
        })
        .await?;
        open.finish();
        Ok(())
    }

    /// Roll back: the claim and everything the handler wrote.
    pub(crate) async fn rollback(&self) {
        let mut open = self.0.lock().await;
        if open.checkout.is_none() {
            return;
        }
        match open.run(async |c: &Connection| c.client.batch_execute("ROLLBACK").await).await {
            Ok(()) => open.finish(),
            // Closed unpooled: the server rolls back.
            Err(_) => drop(open.checkout.take()),
        }
    }
}
