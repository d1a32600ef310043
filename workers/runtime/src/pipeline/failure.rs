//! Why a delivery did not produce an ok reply: the contract's kind, a code, a message.

use crate::{contract::failure::FailureKind, handler::HandlerError};

/// Why a message did not produce an ok reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Failure {
    /// Failure kind (the contract's list).
    pub(super) kind: FailureKind,
    /// Machine-readable code, part of the fingerprint.
    pub(super) code: String,
    /// Human-readable message (truncated when written to headers).
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(kind: FailureKind, code: &str, message: impl Into<String>) -> Self {
        Self { kind, code: code.to_owned(), message: message.into() }
    }

    /// A handler's error: transient, or permanent otherwise.
    pub(super) fn from_handler(error: HandlerError) -> Self {
        let kind = if error.is_transient() { FailureKind::Transient } else { FailureKind::Permanent };
        Self { kind, code: error.code.into_owned(), message: error.message }
    }

    /// The same failure, with what happened next appended to its message.
    pub(super) fn and_then(self, what: impl std::fmt::Display) -> Self {
        Self { message: format!("{}; {what}", self.message), ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::failure::code;

    #[test]
    fn a_handler_error_keeps_its_code_and_message_and_says_transient_or_permanent() {
        let transient = Failure::from_handler(HandlerError::transient("db_down", "no connection"));
        assert_eq!(transient, Failure::new(FailureKind::Transient, "db_down", "no connection"));
        let permanent = Failure::from_handler(HandlerError::permanent(code::HANDLER_PANICKED, "boom"));
        assert_eq!(permanent.kind, FailureKind::Permanent);
    }

    #[test]
    fn and_then_appends_to_the_message_only() {
        let failure = Failure::new(FailureKind::Transient, "db_down", "no connection").and_then("the tier refused it");
        assert_eq!(failure.message, "no connection; the tier refused it");
        assert_eq!((failure.kind, failure.code.as_str()), (FailureKind::Transient, "db_down"));
    }
}
