//! The wire contract in code: header names, naming rules, failure kinds. The prose
//! version for producers in other languages is `schemas/README.md`; the two are kept
//! equal by tests.

pub mod failure;
pub mod header_map;
pub mod headers;
pub mod key;
pub mod naming;
pub mod timestamp;
pub mod trace;
