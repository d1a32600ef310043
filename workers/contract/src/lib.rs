//! The wire contract in code: header names, naming rules, reply statuses, failure kinds,
//! payload codecs, the error reply and the AsyncAPI document they add up to. The prose
//! version for producers in other languages is `schemas/README.md`; the two are kept
//! equal by tests.

pub mod asyncapi;
pub mod codec;
pub mod error_reply;
pub mod failure;
pub mod header_map;
pub mod headers;
pub mod key;
pub mod naming;
pub mod protobuf_text;
pub mod status;
pub mod timestamp;
pub mod trace;
