//! A minimal HTTP GET, for container health checks (`courier probe <url>`) where the
//! image has no curl. It asks in HTTP/1.0, so that the body comes whole: to an HTTP/1.1
//! request a server may answer in chunks, which this does not decode.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `url` (`http://host:port/path`); returns the status code and the body.
pub async fn get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("{authority}: {e}"))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("{url}: not an HTTP response"))?;
        let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that, like Go's net/http (Prometheus), answers an HTTP/1.1 request with a
    /// long body in chunks and an HTTP/1.0 one whole: the probe gets the body itself.
    #[tokio::test]
    async fn a_body_a_server_would_chunk_comes_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let body = "x".repeat(5_000);
        let served = body.clone();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 1024];
            let n = stream.read(&mut request).await.expect("read");
            let answer = if request[..n].starts_with(b"GET /alerts HTTP/1.1\r\n") {
                format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{served}\r\n0\r\n\r\n",
                    served.len()
                )
            } else {
                format!("HTTP/1.0 200 OK\r\n\r\n{served}")
            };
            stream.write_all(answer.as_bytes()).await.expect("write");
        });
        let (status, got) = get(&format!("http://{address}/alerts"), Duration::from_secs(5)).await.expect("answer");
        assert_eq!(status, 200);
        assert!(got == body, "the body came framed: {:?}…", &got[..got.len().min(12)]);
    }
}
