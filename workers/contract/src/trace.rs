//! W3C trace context (`traceparent`): a worker continues the request's trace. Its outputs
//! (reply, retry, dead-letter record) carry the same trace id with the worker's own span
//! id as parent, so one trace follows a request across services, retries and replays.

/// The `traceparent` for a worker's outputs: a child of `incoming` (same trace id and
/// flags, new span id), or the root of a new sampled trace when there is none.
pub fn child_of(incoming: Option<&str>) -> String {
    let ids = uuid::Uuid::new_v4().simple().to_string();
    let span_id = &ids[..16];
    match incoming.and_then(parse) {
        Some((trace_id, flags)) => format!("00-{trace_id}-{span_id}-{flags}"),
        None => format!("00-{}-{span_id}-01", uuid::Uuid::new_v4().simple()),
    }
}

/// The trace id of a `traceparent`, if well-formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    parse(traceparent).map(|(trace_id, _)| trace_id)
}

/// `(trace id, flags)` of a version-00 `traceparent`.
fn parse(traceparent: &str) -> Option<(&str, &str)> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && trace_id != "0".repeat(32)
        && span_id != "0".repeat(16);
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let child = child_of(Some(INCOMING));
        assert_eq!(trace_id(&child), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(child.ends_with("-01") && child != INCOMING, "{child}");
        assert_eq!(child.len(), INCOMING.len());
    }

    #[test]
    fn without_a_valid_parent_a_new_trace_starts() {
        for incoming in [None, Some("garbage"), Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01")] {
            let root = child_of(incoming);
            assert!(trace_id(&root).is_some(), "{root}");
            assert_ne!(trace_id(&root), Some("00000000000000000000000000000000"));
        }
    }
}
