//! A little HTTP/1.1 for the tests (GET and POST, `Connection: close`), and free ports.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// GET `http://127.0.0.1:<port><path>` (with `courier probe`'s client): (status, body);
/// status 0 when nothing answers.
pub async fn get(port: u16, path: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}{path}");
    courier::observe::probe::get(&url, Duration::from_secs(30)).await.unwrap_or((0, String::new()))
}

/// POST a body with extra headers (`name: value` lines).
pub async fn post(port: u16, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(port, &request).await
}

async fn exchange(port: u16, request: &str) -> (u16, String) {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    };
    tokio::time::timeout(Duration::from_secs(30), attempt).await.ok().flatten().unwrap_or((0, String::new()))
}

/// The value of one series in a Prometheus text exposition (`name{labels}` exactly as
/// printed, labels sorted by name), or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Poll `GET path` until it answers `status`; panics after `patience`.
pub async fn wait_for_status(port: u16, path: &str, status: u16, patience: Duration) {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let (got, _) = get(port, path).await;
        if got == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} answered {got}, waited for {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
