//! A reply's status (`courier-status`): whether it carries the handler's answer or an
//! error reply.

use std::fmt;

use crate::headers::{Headers, STATUS};

/// What a reply reports. The wire names are the contract (`schemas/README.md#reply`,
/// checked by a test).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The handler's reply: the payload matches the worker's reply schema.
    Ok,
    /// The request was dead-lettered: the payload is an
    /// [`ErrorReply`](crate::error_reply::ErrorReply).
    Error,
}

impl Status {
    /// Every status, in documentation order.
    pub const ALL: [Self; 2] = [Self::Ok, Self::Error];

    /// The wire value (`courier-status`; the `type` property on AMQP).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }

    /// Parse a wire value; `None` for anything else (another AMQP producer's `type`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// The status a message's headers carry; `None` when it has none, or one that is not
    /// the contract's (so not a Courier reply).
    pub fn of(headers: &Headers) -> Option<Self> {
        headers.get(STATUS).and_then(|value| Self::parse(value))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("OK"), None, "wire values are case-sensitive");
        assert_eq!(Status::parse("OrderCreated"), None);
    }

    #[test]
    fn the_headers_status_is_read() {
        let mut headers = Headers::new();
        assert_eq!(Status::of(&headers), None);
        headers.insert(STATUS.into(), "error".into());
        assert_eq!(Status::of(&headers), Some(Status::Error));
        headers.insert(STATUS.into(), "done".into());
        assert_eq!(Status::of(&headers), None);
    }

    /// The reply table's `courier-status` row lists exactly these values, in this order.
    #[test]
    fn every_status_is_documented() {
        let doc = include_str!("../../../schemas/README.md");
        let row = format!("| `{STATUS}` |");
        let line = doc.lines().find(|line| line.starts_with(&row)).expect("the reply table's courier-status row");
        let value = &line[row.len()..];
        let documented: Vec<&str> = value.split('`').skip(1).step_by(2).collect();
        let ours: Vec<&str> = Status::ALL.iter().map(|status| status.as_str()).collect();
        assert_eq!(documented, ours, "schemas/README.md: {line}");
    }
}
