//! `courier asyncapi`: a worker's AsyncAPI document from its published schemas.

use std::path::PathBuf;

use anyhow::Context as _;
use courier::{WorkerArgs, contract::asyncapi};

/// Flags of `courier asyncapi`.
#[derive(Debug, clap::Args)]
pub struct AsyncapiArgs {
    /// The worker's name (default queue names derive from it).
    #[arg(long, env = "COURIER_WORKER")]
    worker: String,
    /// The folder of published schemas: `<worker>/request.schema.json`,
    /// `<worker>/reply.schema.json`, and `<worker>/<worker>.proto` when it speaks protobuf.
    #[arg(long, default_value = "schemas")]
    schemas: PathBuf,
    /// The protobuf request and reply messages (default: `<package>.Request` and
    /// `<package>.Response` of the `.proto`).
    #[arg(long, num_args = 2, value_names = ["REQUEST", "REPLY"])]
    proto_messages: Option<Vec<String>>,
    /// Describe the channels as a requester of that name sees them (it sends requests and
    /// reads replies from `<client>.replies`, as the gateway does), not as the worker.
    #[arg(long)]
    client: Option<String>,
    #[command(flatten)]
    args: WorkerArgs,
}

/// The document as pretty JSON.
pub fn render(args: &AsyncapiArgs) -> anyhow::Result<String> {
    let settings = args.args.settings(&args.worker)?;
    let folder = args.schemas.join(&args.worker);
    let read = |file: &str| {
        let path = folder.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let json = |file: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&read(file)?).with_context(|| format!("{file} is not JSON"))
    };
    let proto_path = folder.join(format!("{}.proto", args.worker));
    let proto = proto_path.exists().then(|| read(&format!("{}.proto", args.worker))).transpose()?;
    let messages = match (&proto, &args.proto_messages) {
        (_, Some(names)) => Some((names[0].clone(), names[1].clone())),
        (Some(text), None) => {
            let package = text
                .lines()
                .find_map(|line| line.trim().strip_prefix("package "))
                .map(|rest| rest.trim_end_matches(';').trim().to_owned())
                .context("the .proto names no package: give --proto-messages")?;
            Some((format!("{package}.Request"), format!("{package}.Response")))
        }
        (None, None) => None,
    };
    let worker = asyncapi::Worker {
        name: &args.worker,
        request_schema: json("request.schema.json")?,
        reply_schema: json("reply.schema.json")?,
        proto: proto
            .as_deref()
            .zip(messages.as_ref())
            .map(|(text, (request, reply))| (text, request.as_str(), reply.as_str())),
        topology: settings.topology(),
    };
    let document = match &args.client {
        None => asyncapi::document(&worker),
        Some(client) => asyncapi::client_document(&worker, client),
    };
    Ok(serde_json::to_string_pretty(&document)?)
}
