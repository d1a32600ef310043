//! lapin's errors, classified where they are read: an outage that reconnecting cures, or
//! a refusal that would come again.

use crate::transport::TransportError;

/// A lapin error, classified where it is read. What reconnecting can cure (I/O, a missed
/// heartbeat, the broker closing the connection) is an outage; a channel-level refusal
/// (access refused, not found, precondition failed) answers the operation itself and
/// would answer the same again, and so would what lapin cannot recover from (a frame it
/// cannot parse or write, a runtime shutting down).
pub(crate) fn failed(error: lapin::Error) -> TransportError {
    if error.can_be_recovered() && !error.is_amqp_soft_error() {
        TransportError::unavailable(error)
    } else {
        TransportError::broker(error)
    }
}
