//! W3C trace context (`traceparent`): a worker continues the request's trace. Its outputs
//! (reply, retry, dead-letter record) carry the same trace id with the worker's own span
//! id as parent, so one trace follows a request across services, retries and replays.
//!
//! The one reader and writer of `traceparent` in Courier: producers and the client use it
//! directly, and the runtime builds its OpenTelemetry spans' remote parent from what it
//! reads and writes their ids back through it.

use std::{
    fmt,
    num::{NonZeroU64, NonZeroU128},
};

/// A valid `traceparent`: the trace a message belongs to, the span that sent it, and
/// whether that trace is sampled.
///
/// Read strictly, as W3C Trace Context (level 1) says: two lowercase hex digits of
/// version (`ff` is invalid), then a 32-digit trace id and a 16-digit span id (neither
/// all zeros) and 2 digits of flags, all lowercase hex and separated by `-`. Version `00`
/// has nothing after the flags; a later version may add fields after another `-`, which
/// are ignored (its first four fields are read as version 00's). Of the flags only
/// `sampled` is kept: W3C has the others set to zero by whoever passes the trace on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace, the same in every service, retry and output it crosses.
    trace_id: NonZeroU128,
    /// The span that sent the message: the parent of the receiver's span.
    span_id: NonZeroU64,
    /// Whether the sender records this trace; its children say the same.
    sampled: bool,
}

/// The `sampled` bit of the flags.
const SAMPLED: u128 = 0x01;
/// Characters in a version-00 `traceparent`: `vv-` + 32 + `-` + 16 + `-` + 2.
const LEN: usize = 55;

impl TraceParent {
    /// A trace parent with these ids; `None` when either is zero (W3C: invalid).
    pub fn new(trace_id: u128, span_id: u64, sampled: bool) -> Option<Self> {
        Some(Self { trace_id: NonZeroU128::new(trace_id)?, span_id: NonZeroU64::new(span_id)?, sampled })
    }

    /// Read a `traceparent` header value (surrounding whitespace allowed); `None` when it
    /// is not valid, and W3C then says to start a new trace.
    pub fn parse(value: &str) -> Option<Self> {
        let (head, rest) = value.trim().as_bytes().split_at_checked(LEN)?;
        let version = hex(&head[..2])?;
        let after_flags_ok = match version {
            0 => rest.is_empty(),
            0xff => false,
            _ => rest.first().is_none_or(|&b| b == b'-'),
        };
        let dashes = head[2] == b'-' && head[35] == b'-' && head[52] == b'-';
        if !(after_flags_ok && dashes) {
            return None;
        }
        let (trace_id, span_id, flags) = (hex(&head[3..35])?, hex(&head[36..52])?, hex(&head[53..])?);
        Self::new(trace_id, u64::try_from(span_id).ok()?, flags & SAMPLED != 0)
    }

    /// The root of a new, sampled trace.
    pub fn root() -> Self {
        let trace_id = NonZeroU128::new(uuid::Uuid::new_v4().as_u128()).unwrap_or(NonZeroU128::MIN);
        Self { trace_id, span_id: new_span_id(), sampled: true }
    }

    /// A span of the same trace under this one: same trace id and `sampled`, a new span id.
    #[must_use]
    pub fn child(self) -> Self {
        Self { span_id: new_span_id(), ..self }
    }

    /// The trace id.
    pub fn trace_id(self) -> u128 {
        self.trace_id.get()
    }

    /// The span id (W3C's `parent-id`).
    pub fn span_id(self) -> u64 {
        self.span_id.get()
    }

    /// Whether the trace is sampled.
    pub fn sampled(self) -> bool {
        self.sampled
    }
}

/// The `traceparent` header value, in version 00 (the only one there is to write).
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

/// The `traceparent` for a worker's outputs: a child of `incoming` (same trace id and
/// sampled flag, new span id), or the root of a new sampled trace when there is no valid one.
pub fn child_of(incoming: Option<&str>) -> String {
    incoming.and_then(TraceParent::parse).map_or_else(TraceParent::root, TraceParent::child).to_string()
}

/// The trace id of a `traceparent`, if valid: its 32 hex digits, as written.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let value = traceparent.trim();
    // A valid value is ASCII, its trace id at a fixed place.
    TraceParent::parse(value).map(|_| &value[3..35])
}

/// A random span id. A version-4 UUID has version bits in its first half, so that half
/// is never zero.
fn new_span_id() -> NonZeroU64 {
    NonZeroU64::new(uuid::Uuid::new_v4().as_u64_pair().0).unwrap_or(NonZeroU64::MIN)
}

/// Lowercase hex digits as a number (W3C allows no capitals); at most 32 digits.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let digit = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

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
            assert!(root.ends_with("-01"), "a new trace is sampled: {root}");
        }
    }

    #[test]
    fn the_fields_are_read_as_numbers() {
        let parent = TraceParent::parse(INCOMING).expect("valid");
        assert_eq!(parent.trace_id(), 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(parent.span_id(), 0x00f0_67aa_0ba9_02b7);
        assert!(parent.sampled());
        assert_eq!(parent.to_string(), INCOMING);
    }

    #[test]
    fn only_what_w3c_allows_is_read() {
        let valid = [
            INCOMING,
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\t",
            // A later version: its first four fields are read, what follows a dash ignored.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ];
        for value in valid {
            assert!(TraceParent::parse(value).is_some(), "{value:?} is valid");
        }
        let invalid = [
            ("", "empty"),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
            ("0f-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b701", "no dash before the flags"),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "zero trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "zero span id"),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "capital trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", "capital span id"),
            ("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "capital version"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", "capital flags"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", "version 00 with more"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-010", "flags too long"),
            ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "later version, no dash after"),
            ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", "short trace id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", "short span id"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "no flags"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01", "not hex"),
            ("00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01", "not ASCII"),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01", "not dashes"),
        ];
        for (value, why) in invalid {
            assert_eq!(TraceParent::parse(value), None, "{why}: {value:?}");
            assert_eq!(trace_id(value), None, "{why}: {value:?}");
        }
    }

    #[test]
    fn only_the_sampled_flag_is_passed_on() {
        let unknown_flags = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09";
        assert!(child_of(Some(unknown_flags)).ends_with("-01"));
        let not_sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02";
        let child = child_of(Some(not_sampled));
        assert!(child.ends_with("-00"), "{child}");
        assert_eq!(trace_id(&child), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    /// The rule of [`TraceParent::parse`] said another way, field by field, to check it against.
    fn w3c_allows(value: &str) -> bool {
        let fields: Vec<&str> = value.trim().split('-').collect();
        let lower_hex = |field: &str, len: usize| {
            field.len() == len && field.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        fields.len() >= 4
            && lower_hex(fields[0], 2)
            && fields[0] != "ff"
            && (fields[0] != "00" || fields.len() == 4)
            && lower_hex(fields[1], 32)
            && fields[1].bytes().any(|b| b != b'0')
            && lower_hex(fields[2], 16)
            && fields[2].bytes().any(|b| b != b'0')
            && lower_hex(fields[3], 2)
    }

    proptest! {
        /// What is written is read back as it was, in the one layout W3C allows.
        #[test]
        fn what_is_written_reads_back(trace in 1u128.., span in 1u64.., sampled in any::<bool>()) {
            let parent = TraceParent::new(trace, span, sampled).expect("non-zero ids");
            let written = parent.to_string();
            prop_assert_eq!(TraceParent::parse(&written), Some(parent));
            prop_assert!(w3c_allows(&written), "{}", written);
            let trace_hex = format!("{trace:032x}");
            prop_assert_eq!(trace_id(&written), Some(trace_hex.as_str()));
        }

        /// Near-misses of every field (lengths, capitals, zeros, version ff, what follows
        /// the flags): read exactly when W3C allows them.
        #[test]
        fn reads_exactly_what_w3c_allows(
            version in prop_oneof![4 => "00", 2 => "[0-9a-e][0-9a-f]", 1 => "ff", 2 => "[0-9a-fA-F]{1,3}"],
            trace in prop_oneof![1 => "0{32}", 6 => "[0-9a-f]{32}", 2 => "[0-9a-fA-F]{31,33}"],
            span in prop_oneof![1 => "0{16}", 6 => "[0-9a-f]{16}", 2 => "[0-9a-fA-F]{15,17}"],
            flags in prop_oneof![4 => "[0-9a-f]{2}", 1 => "[0-9a-fA-F]{1,3}"],
            tail in prop_oneof![3 => "", 2 => "-[0-9a-z-]{0,8}", 1 => "[0-9a-z]{1,3}"],
        ) {
            let value = format!("{version}-{trace}-{span}-{flags}{tail}");
            prop_assert_eq!(TraceParent::parse(&value).is_some(), w3c_allows(&value), "{}", value);
        }

        /// Any text at all is read without a panic, and what is read writes back as its
        /// first four fields in version 00.
        #[test]
        fn any_text_is_read_safely(value in "\\PC{0,80}") {
            if let Some(parent) = TraceParent::parse(&value) {
                prop_assert_eq!(trace_id(&value), Some(&parent.to_string()[3..35]));
            }
        }
    }
}
