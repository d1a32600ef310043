//! A real headless browser for the console's tests: Debian's `chromium`, driven through
//! `chromedriver` with the W3C WebDriver protocol (JSON over HTTP, the few commands the
//! tests need). `scripts/deps-debian` installs both.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a page may take to show what a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One browser session; chromedriver and the browser are killed when dropped.
#[derive(Debug)]
pub struct Browser {
    /// chromedriver, leading a process group of its own (the browser is in it too).
    driver: Child,
    /// chromedriver's port.
    port: u16,
    /// The WebDriver session.
    session: String,
}

impl Browser {
    /// Start chromedriver and a headless browser.
    pub async fn start() -> Self {
        let port = crate::http::free_port();
        let driver = Command::new(std::env::var("COURIER_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver (scripts/deps-debian installs chromium-driver)");
        let mut browser = Self { driver, port, session: String::new() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while browser.call("GET", "/status", None).await.1["value"]["ready"] != true {
            assert!(tokio::time::Instant::now() < deadline, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("COURIER_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]
            }
        }}});
        let (status, created) = browser.call("POST", "/session", Some(capabilities)).await;
        assert_eq!(status, 200, "no browser session: {created}");
        browser.session = created["value"]["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    /// Open `url` and wait for it to load.
    pub async fn open(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    /// The current address.
    pub async fn url(&self) -> String {
        self.command("GET", "/url", Value::Null).await.as_str().unwrap_or_default().to_owned()
    }

    /// The text the page shows.
    pub async fn page_text(&self) -> String {
        self.text("body").await.unwrap_or_default()
    }

    /// The text of the first element matching `css`, if there is one (`None` too when the
    /// page reloaded between finding the element and reading it: a job's page reloads itself).
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css).await?;
        let (status, text) = self.call("GET", &format!("/session/{}/element/{element}/text", self.session), None).await;
        (status == 200).then(|| text["value"].as_str().unwrap_or_default().to_owned())
    }

    /// How many elements match `css`.
    pub async fn count(&self, css: &str) -> usize {
        let found = self.command("POST", "/elements", json!({ "using": "css selector", "value": css })).await;
        found.as_array().map_or(0, Vec::len)
    }

    /// Click the first element matching `css` (which must exist), a link or a form's
    /// button, and wait until the page it leads to has loaded: the click's answer may come
    /// before the browser has left the page it was on.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await.unwrap_or_else(|| panic!("no {css} on the page"));
        self.script("window.__courier_clicked = true").await;
        self.command("POST", &format!("/element/{element}/click"), json!({})).await;
        let arrived = json!({
            "script": "return document.readyState === 'complete' && window.__courier_clicked === undefined",
            "args": []
        });
        let deadline = tokio::time::Instant::now() + PATIENCE;
        // Mid-navigation the script may be refused: that is not arriving yet.
        while self.call("POST", &format!("/session/{}/execute/sync", self.session), Some(arrived.clone())).await.1["value"]
            != true
        {
            assert!(tokio::time::Instant::now() < deadline, "clicking {css} led to no new page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Type `text` into the first element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await.unwrap_or_else(|| panic!("no {css} on the page"));
        self.command("POST", &format!("/element/{element}/value"), json!({ "text": text })).await;
    }

    /// Run `script` in the page; its return value.
    pub async fn script(&self, script: &str) -> Value {
        self.command("POST", "/execute/sync", json!({ "script": script, "args": [] })).await
    }

    /// Wait until the element `css` shows text containing `wanted` (a page that reloads
    /// itself, as a job's does, is read again); its text.
    pub async fn wait_for_text(&self, css: &str, wanted: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = self.text(css).await.unwrap_or_default();
            if text.contains(wanted) {
                return text;
            }
            assert!(tokio::time::Instant::now() < deadline, "{css} shows {text:?}, not {wanted:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", Value::Null).await;
        base64_decode(encoded.as_str().unwrap_or_default())
    }

    /// End the session (the browser quits).
    pub async fn close(mut self) {
        let session = std::mem::take(&mut self.session);
        let _ = self.call("DELETE", &format!("/session/{session}"), None).await;
    }

    async fn find(&self, css: &str) -> Option<String> {
        let body = json!({ "using": "css selector", "value": css });
        let (status, found) = self.call("POST", &format!("/session/{}/element", self.session), Some(body)).await;
        if status != 200 {
            return None;
        }
        let element = found["value"].as_object()?.values().next()?.as_str()?.to_owned();
        Some(element)
    }

    /// A session command; panics when the browser refuses it.
    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" { None } else { Some(body) };
        let (status, answer) = self.call(method, &format!("/session/{}{path}", self.session), body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            // chromedriver keeps the connection open: read the head, then Content-Length bytes.
            let mut response = Vec::new();
            let mut buffer = [0u8; 16 * 1024];
            let end = loop {
                if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end;
                }
                let n = stream.read(&mut buffer).await.ok().filter(|n| *n > 0)?;
                response.extend_from_slice(&buffer[..n]);
            };
            let head = String::from_utf8_lossy(&response[..end]).to_lowercase();
            let status = head.split_whitespace().nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while response.len() < end + 4 + length {
                let n = stream.read(&mut buffer).await.ok().filter(|n| *n > 0)?;
                response.extend_from_slice(&buffer[..n]);
            }
            let body = &response[end + 4..end + 4 + length];
            Some((status, serde_json::from_slice(body).unwrap_or(Value::Null)))
        };
        tokio::time::timeout(PATIENCE, exchange).await.ok().flatten().unwrap_or((0, Value::Null))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &s)| n | (u32::from(s) << (18 - 6 * i)));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGk="), b"hi");
    }
}
