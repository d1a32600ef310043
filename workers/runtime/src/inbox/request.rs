//! What the inbox takes from a request, and what it refuses: the message id it keys on,
//! the digest that tells a redelivery from another request under a used id, and which of
//! the database's errors the request caused (not an outage).

use sha2::{Digest as _, Sha256};

/// The longest `courier-message-id` the inbox stores (a B-tree index entry holds at most
/// about 2.7 KB; ids are UUIDs in practice).
pub const MAX_MESSAGE_ID_BYTES: usize = 512;

/// Why `id` cannot key the inbox, if it cannot: empty, longer than
/// [`MAX_MESSAGE_ID_BYTES`], or holding a NUL (PostgreSQL text cannot).
pub(crate) fn message_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("courier-message-id is empty".into());
    }
    if id.len() > MAX_MESSAGE_ID_BYTES {
        return Some(format!(
            "courier-message-id is {} bytes, the inbox takes at most {MAX_MESSAGE_ID_BYTES}",
            id.len()
        ));
    }
    id.contains('\0').then(|| "courier-message-id holds a NUL byte".into())
}

/// A request's identity under its message id: the SHA-256 of its payload. A redelivery
/// (the same bytes, whatever its correlation id or reply-to) has the same digest.
pub(super) fn digest(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// Whether a database error is the request's fault: SQLSTATE class 22 (data exception: a
/// value the column cannot hold) or 23 (integrity constraint violation). Such an error
/// says nothing about the database's health, so it must not open the breaker.
pub(super) fn caused_by_request(sqlstate: &str) -> bool {
    sqlstate.starts_with("22") || sqlstate.starts_with("23")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ids_postgresql_cannot_store_are_refused() {
        assert_eq!(message_id_problem("5f0c8a2e-3b1d-4c8e-9f11-0a2b3c4d5e6f"), None);
        assert!(message_id_problem("").is_some());
        assert!(message_id_problem("pay\0-1").is_some());
        assert_eq!(message_id_problem(&"x".repeat(MAX_MESSAGE_ID_BYTES)), None);
        assert!(message_id_problem(&"x".repeat(MAX_MESSAGE_ID_BYTES + 1)).is_some());
    }

    #[test]
    fn data_and_constraint_errors_are_the_requests() {
        for code in ["22021", "22001", "22P02", "23505", "23503"] {
            assert!(caused_by_request(code), "{code}");
        }
        for code in ["08006", "53300", "57014", "40001", "55P03", "28P01"] {
            assert!(!caused_by_request(code), "{code}");
        }
    }

    proptest! {
        /// Same bytes, same digest; different bytes, different digest.
        #[test]
        fn the_digest_tells_requests_apart(a in proptest::collection::vec(any::<u8>(), 0..256), b in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert_eq!(digest(&a), digest(&a.clone()));
            prop_assert_eq!(digest(&a) == digest(&b), a == b);
        }

        /// Any id: refused exactly when empty, too long or holding a NUL; never a panic.
        #[test]
        fn any_id_has_one_answer(id in ".{0,600}") {
            let refused = id.is_empty() || id.len() > MAX_MESSAGE_ID_BYTES || id.contains('\0');
            prop_assert_eq!(message_id_problem(&id).is_some(), refused);
        }
    }
}
