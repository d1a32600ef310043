//! Producers in another language, run as processes: `tests/clients/protobuf_client.py`
//! (its Python packages come from `scripts/deps-python`).

/// Run the protobuf client (`amqp URL QUEUE REPLIES` or `kafka BOOTSTRAP TOPIC REPLIES`)
/// and check its three replies: a greeting answered ok, an empty message refused as
/// `permanent`, bytes that are no `greeter.Request` refused as `decode` — each in
/// protobuf, each decoded with the code generated from the published `.proto` files.
pub fn protobuf_client_is_answered(args: &[&str], worker_log: impl Fn() -> String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/protobuf_client.py");
    let output = std::process::Command::new("python3").arg(script).args(args).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Python client failed:\n{stderr}\nworker:\n{}", worker_log());
    println!("{stdout}");
    let replies: Vec<serde_json::Value> =
        stdout.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    assert_eq!(replies.len(), 3, "one reply per request:\n{stdout}\n{stderr}\nworker:\n{}", worker_log());
    for reply in &replies {
        assert_eq!(reply["content_type"], "application/x-protobuf", "answered in kind: {reply}");
    }
    let find = |status: &str, code: &str| {
        replies.iter().any(|r| r["status"] == status && (r["result"] == code || r["error"]["code"] == code))
    };
    assert!(find("ok", "Hello, Ada"), "{stdout}");
    assert!(find("error", "empty_message"), "{stdout}");
    assert!(find("error", "invalid_protobuf"), "{stdout}");
}
