//! The idempotent inbox (`--inbox postgres://…`): a request is processed once per
//! `courier-message-id`, whatever the broker redelivers.
//!
//! Per request, one database transaction: it claims the message id (an insert that waits
//! for any other worker holding the same id), the handler runs inside it
//! ([`crate::Context::inbox`]: its own writes commit with the claim), and it commits with
//! the encoded reply *before* the reply is published. A request that comes again finds
//! the committed row and is answered from it, without the handler. A failed round rolls
//! back (the handler's writes too) and takes the usual retry and dead-letter path.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_postgres::{Client, NoTls, Row, Statement, types::ToSql};

/// The inbox table, created at start-up.
const SCHEMA: &str = include_str!("schema.sql");
/// Set right after the claim; a failed handler call is rolled back to it.
const SAVEPOINT: &str = "SAVEPOINT courier_call";
/// Serialises start-up migrations of workers starting together (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x0063_6f75_7269_6572;

/// The inbox failed: the database is unreachable, or a statement failed.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// A database error.
    #[error("inbox database: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// The transaction was already committed or rolled back.
    #[error("the inbox transaction is over")]
    Finished,
}

/// A worker's inbox: its database and a pool of connections.
#[derive(Clone)]
pub struct Inbox {
    shared: Arc<Shared>,
}

struct Shared {
    config: tokio_postgres::Config,
    worker: String,
    idle: Mutex<Vec<Connection>>,
}

/// A pooled connection and its statements, prepared once (a statement given as text is
/// parsed on every call: a round trip more).
struct Connection {
    client: Client,
    claim: Statement,
    stored: Statement,
    store: Statement,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("worker", &self.shared.worker).finish_non_exhaustive()
    }
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// Answered before: the stored reply.
    Answered(Stored),
    /// Not answered yet: this transaction holds the message id until it ends.
    Mine(Transaction),
}

/// A reply as the inbox stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The reply's `content-type`.
    pub content_type: String,
    /// The reply's payload.
    pub payload: Vec<u8>,
}

impl Inbox {
    /// Connect to `url` (`postgres://user@host:port/db`), create the inbox table and run
    /// `handler_schema` (the handler's own tables, [`crate::Handler::INBOX_SCHEMA`]).
    pub async fn connect(url: &str, worker: &str, handler_schema: &str) -> Result<Self, InboxError> {
        let config: tokio_postgres::Config = url.parse()?;
        let shared = Arc::new(Shared { config, worker: worker.to_owned(), idle: Mutex::new(Vec::new()) });
        let client = shared.connect().await?;
        let migration =
            format!("BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); {SCHEMA}\n{handler_schema}\n; COMMIT;");
        client.batch_execute(&migration).await?;
        shared.give_back(Connection::prepare(client).await?);
        Ok(Self { shared })
    }

    /// Claim `message_id`: [`Claim::Answered`] with the stored reply if a worker answered
    /// it already, else a transaction that holds it (another worker claiming the same id
    /// waits until this one ends).
    pub async fn claim(&self, message_id: &str) -> Result<Claim, InboxError> {
        let worker = &self.shared.worker;
        let connection = self.shared.take().await?;
        let key: [&(dyn ToSql + Sync); 2] = [worker, &message_id];
        // One round trip: futures polled together are pipelined, in order. The savepoint
        // after the claim is where a failed handler call's writes are rolled back to
        // (it stays established after a rollback to it).
        let (_, inserted, ()) = tokio::try_join!(
            connection.client.batch_execute("BEGIN"),
            connection.client.execute(&connection.claim, &key),
            connection.client.batch_execute(SAVEPOINT),
        )?;
        if inserted == 1 {
            let shared = Arc::clone(&self.shared);
            let open = Open { connection: Some(connection), shared, message_id: message_id.to_owned() };
            return Ok(Claim::Mine(Transaction(Arc::new(tokio::sync::Mutex::new(open)))));
        }
        let (row, ()) = tokio::try_join!(
            connection.client.query_one(&connection.stored, &key),
            connection.client.batch_execute("ROLLBACK"),
        )?;
        self.shared.give_back(connection);
        let content_type: Option<String> = row.get(0);
        let payload: Option<Vec<u8>> = row.get(1);
        Ok(Claim::Answered(Stored {
            content_type: content_type.unwrap_or_default(),
            payload: payload.unwrap_or_default(),
        }))
    }

    /// Remove the rows of this worker answered longer ago than `age`; how many.
    pub async fn remove_older_than(&self, age: Duration) -> Result<u64, InboxError> {
        let connection = self.shared.take().await?;
        let removed = connection
            .client
            .execute(
                "DELETE FROM courier_inbox WHERE worker = $1 AND answered_at < now() - make_interval(secs => $2)",
                &[&self.shared.worker, &age.as_secs_f64()],
            )
            .await?;
        self.shared.give_back(connection);
        Ok(removed)
    }
}

impl Shared {
    /// An idle connection, or a new one.
    async fn take(&self) -> Result<Connection, InboxError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(connection) if connection.client.is_closed() => continue,
                Some(connection) => return Ok(connection),
                None => break,
            }
        }
        Connection::prepare(self.connect().await?).await
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

    fn give_back(&self, connection: Connection) {
        if !connection.client.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
        }
    }
}

impl Connection {
    async fn prepare(client: Client) -> Result<Self, InboxError> {
        let (claim, stored, store) = tokio::try_join!(
            client.prepare("INSERT INTO courier_inbox (worker, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            client.prepare("SELECT content_type, reply FROM courier_inbox WHERE worker = $1 AND message_id = $2"),
            client.prepare(
                "UPDATE courier_inbox SET content_type = $3, reply = $4, answered_at = now() \
                 WHERE worker = $1 AND message_id = $2"
            ),
        )?;
        Ok(Self { client, claim, stored, store })
    }
}

/// The open database transaction of one request, for the handler's own statements
/// ([`crate::Context::inbox`]): what it writes commits together with the inbox row, or
/// not at all.
#[derive(Clone)]
pub struct Transaction(Arc<tokio::sync::Mutex<Open>>);

struct Open {
    /// `None` once committed or rolled back.
    connection: Option<Connection>,
    shared: Arc<Shared>,
    message_id: String,
}

impl Drop for Open {
    /// A transaction neither committed nor rolled back (its task was cancelled): its
    /// connection is closed, never pooled, and the server rolls it back.
    fn drop(&mut self) {
        drop(self.connection.take());
    }
}

impl Open {
    fn client(&self) -> Result<&Client, InboxError> {
        Ok(&self.connection.as_ref().ok_or(InboxError::Finished)?.client)
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
        let open = self.0.lock().await;
        Ok(open.client()?.execute(sql, params).await?)
    }

    /// Run a query in the transaction.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, InboxError> {
        let open = self.0.lock().await;
        Ok(open.client()?.query(sql, params).await?)
    }

    /// Undo what a failed handler call wrote: back to the savepoint after the claim.
    pub(crate) async fn undo_call(&self) -> Result<(), InboxError> {
        let open = self.0.lock().await;
        Ok(open.client()?.batch_execute("ROLLBACK TO SAVEPOINT courier_call").await?)
    }

    /// Store the reply and commit, in one round trip: from now on the request is
    /// answered from the inbox.
    pub(crate) async fn commit(&self, stored: &Stored) -> Result<(), InboxError> {
        let mut open = self.0.lock().await;
        let connection = open.connection.take().ok_or(InboxError::Finished)?;
        let row: [&(dyn ToSql + Sync); 4] =
            [&open.shared.worker, &open.message_id, &stored.content_type, &stored.payload];
        tokio::try_join!(
            connection.client.execute(&connection.store, &row),
            connection.client.batch_execute("COMMIT"),
        )?;
        open.shared.give_back(connection);
        Ok(())
    }

    /// Roll back: the claim and everything the handler wrote.
    pub(crate) async fn rollback(&self) {
        let mut open = self.0.lock().await;
        if let Some(connection) = open.connection.take()
            && connection.client.batch_execute("ROLLBACK").await.is_ok()
        {
            open.shared.give_back(connection);
        }
    }
}
