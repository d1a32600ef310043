//! Prometheus and Alertmanager (Debian's packages, `scripts/deps-debian`) run with the
//! project's own files from `deploy/`, rewritten only where a test must (targets, intervals,
//! a webhook), and a webhook that receives the Alertmanager's notifications.

use crate::http::{free_port, get};

/// A Prometheus or Alertmanager process on a free port with the project's configuration;
/// stopped when dropped.
#[derive(Debug)]
pub struct Server {
    pub port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Server {
    /// Prometheus scraping the greeter on `greeter_metrics_port`, alerting the
    /// Alertmanager on `alertmanager_port`.
    pub fn prometheus(greeter_metrics_port: u16, alertmanager_port: u16) -> Self {
        let target = ("\"greeter-rabbitmq:9464\"", format!("\"127.0.0.1:{greeter_metrics_port}\""));
        Self::start_prometheus(prometheus_config(alertmanager_port, &[target]))
    }

    /// Prometheus with the project's rules, global settings and alerting, scraping `jobs`
    /// (name, `host:port`) instead of the compose services.
    pub fn prometheus_scraping(jobs: &[(&str, String)], alertmanager_port: u16) -> Self {
        let config = prometheus_config(alertmanager_port, &[]);
        let (head, _) = config.split_once("scrape_configs:").expect("prometheus.yml has scrape_configs");
        let mut config = format!("{head}scrape_configs:\n");
        for (job, target) in jobs {
            config += &format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{target}\"]\n");
        }
        Self::start_prometheus(config)
    }

    fn start_prometheus(config: String) -> Self {
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
        let port = free_port();
        let dir = Self::folder("prometheus", port);
        std::fs::write(dir.join("prometheus.yml"), config).expect("write the config");
        std::fs::copy(format!("{deploy}/alerts.yml"), dir.join("alerts.yml")).expect("copy the alert rules");
        let args = [
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        Self::start("prometheus", port, dir, &args)
    }

    /// The Alertmanager, its receiver also posting to `webhook`.
    pub fn alertmanager(webhook: &str) -> Self {
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/alertmanager");
        let port = free_port();
        let dir = Self::folder("alertmanager", port);
        let receiver = format!("  - name: developer\n    webhook_configs:\n      - url: \"{webhook}\"\n");
        let config = rewritten(&format!("{deploy}/alertmanager.yml"), &[("  - name: developer\n", receiver)]);
        std::fs::write(dir.join("alertmanager.yml"), config).expect("write the config");
        let args = [
            format!("--config.file={}", dir.join("alertmanager.yml").display()),
            format!("--storage.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            // A single instance: no gossip port.
            "--cluster.listen-address=".to_owned(),
        ];
        Self::start("prometheus-alertmanager", port, dir, &args)
    }

    fn folder(name: &str, port: u16) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("courier-{name}-{port}"));
        std::fs::create_dir_all(&dir).expect("a folder for the server");
        dir
    }

    fn start(binary: &str, port: u16, dir: std::path::PathBuf, args: &[String]) -> Self {
        let path = ["/usr/bin", "/usr/local/bin"]
            .into_iter()
            .map(|folder| std::path::Path::new(folder).join(binary))
            .find(|path| path.exists())
            .unwrap_or_else(|| panic!("{binary} is not installed: run scripts/deps-debian (scripts/test does)"));
        let log = std::fs::File::create(dir.join("server.log")).expect("log file");
        let child = std::process::Command::new(path)
            .args(args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("start {binary}: {error}"));
        Self { port, dir, child }
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// `deploy/prometheus/prometheus.yml` with scrapes and evaluations every second, alerts
/// sent to the Alertmanager on `alertmanager_port`, and `targets` rewritten.
fn prometheus_config(alertmanager_port: u16, targets: &[(&str, String)]) -> String {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
    let mut changes = vec![
        ("scrape_interval: 5s", "scrape_interval: 1s".to_owned()),
        ("evaluation_interval: 15s", "evaluation_interval: 1s".to_owned()),
        ("\"alertmanager:9093\"", format!("\"127.0.0.1:{alertmanager_port}\"")),
    ];
    changes.extend(targets.iter().cloned());
    rewritten(&format!("{deploy}/prometheus.yml"), &changes)
}

/// The alerts a Prometheus (`/api/v1/alerts`) or Alertmanager (`/api/v2/alerts`) on
/// `port` holds now.
pub async fn alerts(port: u16, path: &str) -> Vec<serde_json::Value> {
    let (_, body) = get(port, path).await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    body["data"]["alerts"].as_array().or(body.as_array()).cloned().unwrap_or_default()
}

/// `path` with each `(from, to)` replaced; panics when `from` is gone (the test is then
/// out of date with the file).
pub fn rewritten(path: &str, changes: &[(&str, String)]) -> String {
    let mut text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (from, to) in changes {
        assert!(text.contains(from), "{path} no longer has {from:?}: update this test");
        text = text.replace(from, to);
    }
    text
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first webhook post whose alerts include `alertname`, as JSON.
pub async fn notification(webhook: &tokio::net::TcpListener, alertname: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut stream, _) = webhook.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut chunk = [0u8; 8192];
        // Headers, then as many body bytes as content-length says.
        let body = loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break None;
            }
            request.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&request);
            let Some((head, body)) = text.split_once("\r\n\r\n") else { continue };
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break Some(body.to_owned());
            }
        };
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        let posted: serde_json::Value = body.and_then(|b| serde_json::from_str(&b).ok()).unwrap_or_default();
        if posted["alerts"].as_array().into_iter().flatten().any(|a| a["labels"]["alertname"] == alertname) {
            return posted;
        }
    }
}
