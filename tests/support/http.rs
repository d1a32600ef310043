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
    courier::observe::probe(&url, Duration::from_secs(30)).await.unwrap_or((0, String::new()))
}

/// POST a JSON body with extra headers (`name: value` lines).
pub async fn post(port: u16, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let response = post_as(port, path, "application/json", body.as_bytes(), headers).await;
    (response.status, String::from_utf8_lossy(&response.body).into_owned())
}

/// An HTTP response.
#[derive(Debug, Default)]
pub struct Response {
    /// 0 when nothing answered.
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// The body.
    pub body: Vec<u8>,
}

/// POST `body` of `content_type` with extra headers.
pub async fn post_as(port: u16, path: &str, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> Response {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    exchange(port, &request).await
}

/// GET with extra headers.
pub async fn get_as(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    // A `Host` among `headers` replaces the default.
    let host = if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        String::new()
    } else {
        format!("Host: 127.0.0.1:{port}\r\n")
    };
    let request = format!("GET {path} HTTP/1.1\r\n{host}Connection: close\r\n{extra}\r\n");
    exchange(port, request.as_bytes()).await
}

async fn exchange(port: u16, request: &[u8]) -> Response {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(request).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&response[..end]).into_owned();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some(Response { status, head, body: response[end + 4..].to_vec() })
    };
    tokio::time::timeout(Duration::from_secs(30), attempt).await.ok().flatten().unwrap_or_default()
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
