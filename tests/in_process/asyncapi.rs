//! The AsyncAPI documents in `schemas/` are what `courier asyncapi` generates (never
//! edited by hand), and the AsyncAPI project's own parser (`@asyncapi/parser` with its
//! protobuf schema parser, run by Node.js: `scripts/asyncapi/validate.mjs`) finds no error
//! and no warning in them.

use courier_tests::process::courier;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The committed documents and the `courier asyncapi` flags that make them.
fn documents() -> [(&'static str, Vec<&'static str>); 3] {
    [
        ("schemas/greeter/asyncapi.json", vec!["--worker", "greeter"]),
        ("schemas/gateway/asyncapi.json", vec!["--worker", "greeter", "--client", "gateway"]),
        // As docker-compose.yml runs it: no retry tiers.
        ("schemas/ledger/asyncapi.json", vec!["--worker", "ledger", "--retry-delays="]),
    ]
}

/// `COURIER_BLESS=1` rewrites them.
#[test]
fn documents_are_generated_from_the_schemas() {
    for (file, flags) in documents() {
        let schemas = format!("{REPO}/schemas");
        let mut args: Vec<String> = ["asyncapi", "--schemas", &schemas].iter().map(|a| (*a).to_owned()).collect();
        args.extend(flags.iter().map(|a| (*a).to_owned()));
        let (code, generated, stderr) = courier(&args);
        assert_eq!(code, 0, "courier {args:?}: {stderr}");
        courier::testing::assert_generated_file(std::path::Path::new(&format!("{REPO}/{file}")), &generated);
    }
}

/// Run the official parser on `files`: (passed, its output).
fn validate(files: &[String]) -> (bool, String) {
    let tool = format!("{REPO}/scripts/asyncapi");
    assert!(
        std::path::Path::new(&format!("{tool}/node_modules/@asyncapi/parser")).exists(),
        "the AsyncAPI parser is not installed: run scripts/deps-node (scripts/test does)"
    );
    let output =
        std::process::Command::new("node").arg(format!("{tool}/validate.mjs")).args(files).output().expect("node runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn documents_pass_the_asyncapi_parser() {
    let files: Vec<String> = documents().iter().map(|(file, _)| format!("{REPO}/{file}")).collect();
    let (passed, report) = validate(&files);
    println!("{report}");
    assert!(passed, "the AsyncAPI parser reports errors or warnings:\n{report}");
    assert_eq!(report.matches("parsed:").count(), files.len(), "{report}");

    // The check can fail: a document with a dangling reference does.
    let mut broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&files[0]).expect("document")).expect("JSON");
    broken["operations"]["handleRequest"]["channel"] = serde_json::json!({ "$ref": "#/channels/missing" });
    let path = std::env::temp_dir().join(format!("courier-asyncapi-broken-{}.json", std::process::id()));
    std::fs::write(&path, broken.to_string()).expect("write");
    let (passed, report) = validate(&[path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    assert!(!passed && report.contains("invalid-ref"), "{report}");
}
