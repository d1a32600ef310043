//! The PostgreSQL of the inbox tests (`scripts/brokers/postgres-up` starts it).

/// The test database: `COURIER_TEST_POSTGRES_URL`, else the local PostgreSQL.
pub fn url() -> String {
    std::env::var("COURIER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A connection to the test database.
pub async fn connect() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A greeter with `--inbox` serving metrics on `port` answered one request id twice: both
/// ok, one handler call, one answer from the inbox.
pub async fn assert_answered_once_then_from_the_inbox(
    port: u16,
    seen: &crate::replies::Replies,
    worker_log: impl Fn() -> String,
) {
    assert_eq!(seen.by_status.get("ok"), Some(&2), "both answered ok: {seen:?}\n{}", worker_log());
    let (_, metrics) = crate::http::get(port, "/metrics").await;
    let metric = |series: &str| crate::http::metric(&metrics, series);
    assert_eq!(metric(r#"courier_inbox_answered_total{worker="greeter"}"#), 1.0, "{metrics}");
    assert_eq!(metric(r#"courier_handler_duration_seconds_count{worker="greeter"}"#), 1.0, "one handler call");
}

/// A database of its own for a role that may open `limit` connections at most (created
/// once, idempotently); its URL.
pub async fn limited_database(limit: u32) -> String {
    let client = connect().await;
    let role = format!("courier_limited_{limit}");
    let exists = client.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await.expect("look up role");
    if exists.is_none() {
        client.batch_execute(&format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT {limit}")).await.expect("create role");
    }
    let exists =
        client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&role]).await.expect("look up database");
    if exists.is_none() {
        client.batch_execute(&format!("CREATE DATABASE {role} OWNER {role}")).await.expect("create database");
    }
    let base = url();
    let host = base.rsplit_once('@').map_or("127.0.0.1:5432/postgres", |(_, host)| host);
    let host = host.split_once('/').map_or(host, |(host, _)| host);
    format!("postgres://{role}@{host}/{role}")
}
