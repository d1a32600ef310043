//! The README's first command: the greeter with no broker runs the dev console on the
//! embedded in-memory broker. Feed it requests on stdin (JSON, and `:pb` lines sent as
//! Protocol Buffers) and read what it prints.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use courier_tests::process::binary;

#[test]
fn the_demo_answers_and_dead_letters_with_reasons() {
    let mut child = Command::new(binary("greeter"))
        .env_remove("COURIER_BROKER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let script = "{\"message\": \"world\"}\n{\"message\": \"\"}\nnot json\n{\"message\": 3}\n\
                  :pb {\"message\": \"Ada\"}\n:pb {\"message\": \"\"}\n:dlq\n";
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write requests");
    let output = child.wait_with_output().expect("the demo exits at the end of its input");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(r#"reply ok: {"result":"Hello, world"}"#), "{stdout}");
    for expected in
        ["kind=permanent code=empty_message", "kind=decode code=invalid_json", "kind=schema code=schema_violation"]
    {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    // Protocol Buffers: the reply decoded for display; the dead letter by field number.
    assert!(stdout.contains(r#"reply ok: (protobuf, 12 bytes) {"result":"Hello, Ada"}"#), "{stdout}");
    assert!(stdout.contains(r#""code":"empty_message""#), "{stdout}");
    assert!(stdout.contains("payload: (protobuf, 0 bytes) {}"), "{stdout}");
    assert!(stdout.contains("4 record(s) in greeter.requests.dlq"), "{stdout}");
}
