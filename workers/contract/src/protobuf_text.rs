//! A Protocol Buffers payload as text for people, without its schema: field numbers and
//! values (`{1: "Ada", 2: 7}`), for `courier dlq show` and the dev console. Reads untrusted
//! bytes: never panics, and its work and output are bounded by the input's length.

use std::fmt::Write as _;

use super::{codec::Codec, headers::Headers};

/// Nested messages are looked into this deep; deeper ones are shown as bytes.
const MAX_DEPTH: usize = 8;

/// The payload as `{field: value, …}`, or `None` when it is not a protobuf message
/// (a truncated field, a wire type that does not exist, a field number 0).
pub fn describe(payload: &[u8]) -> Option<String> {
    describe_named(payload, &|_| None)
}

/// As [`describe`], with the names `name` gives a field by its path of field numbers from
/// the top (`[1]`, then `[1, 2]` inside it); a field it does not name keeps its number.
pub fn describe_named(payload: &[u8], name: &dyn Fn(&[u64]) -> Option<String>) -> Option<String> {
    let mut out = String::new();
    message(payload, &mut Vec::new(), name, &mut out)?;
    Some(out)
}

/// A payload sent as protobuf (its `content-type` says so) as `(protobuf, N bytes) {…}`;
/// `None` for any other payload, or protobuf that does not parse.
pub fn describe_payload(headers: &Headers, payload: &[u8]) -> Option<String> {
    describe_payload_named(headers, payload, &|_| None)
}

/// As [`describe_payload`], with field names as [`describe_named`] takes them.
pub fn describe_payload_named(
    headers: &Headers,
    payload: &[u8],
    name: &dyn Fn(&[u64]) -> Option<String>,
) -> Option<String> {
    let content_type = headers.get(super::headers::CONTENT_TYPE)?;
    if Codec::of_content_type(content_type)? != Codec::Protobuf {
        return None;
    }
    Some(format!("(protobuf, {} bytes) {}", payload.len(), describe_named(payload, name)?))
}

/// `path`: the field numbers leading to this message (its depth is their count).
fn message(
    mut bytes: &[u8],
    path: &mut Vec<u64>,
    name: &dyn Fn(&[u64]) -> Option<String>,
    out: &mut String,
) -> Option<()> {
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            return None;
        }
        let value = match key & 7 {
            0 => varint(&mut bytes)?.to_string(),
            1 => format!("0x{:016x}", u64::from_le_bytes(take(&mut bytes, 8)?.try_into().ok()?)),
            5 => format!("0x{:08x}", u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?)),
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let value = take(&mut bytes, len)?;
                path.push(number);
                let shown = length_delimited(value, path, name);
                path.pop();
                shown
            }
            _ => return None,
        };
        path.push(number);
        let label = name(path).unwrap_or_else(|| number.to_string());
        path.pop();
        fields.push(format!("{label}: {value}"));
    }
    out.push('{');
    out.push_str(&fields.join(", "));
    out.push('}');
    Some(())
}

/// A string when it is readable text, else a nested message when it parses as one, else hex.
/// `path` leads to this field.
fn length_delimited(bytes: &[u8], path: &mut Vec<u64>, name: &dyn Fn(&[u64]) -> Option<String>) -> String {
    if let Ok(text) = std::str::from_utf8(bytes)
        && !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return format!("{text:?}");
    }
    if path.len() <= MAX_DEPTH {
        let mut nested = String::new();
        if message(bytes, path, name, &mut nested).is_some() {
            return nested;
        }
    }
    let mut hex = String::with_capacity(2 + 2 * bytes.len());
    hex.push_str("0x");
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn take<'b>(bytes: &mut &'b [u8], len: usize) -> Option<&'b [u8]> {
    if bytes.len() < len {
        return None;
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(head)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{codec::Codec, error_reply::ErrorReply};

    #[test]
    fn fields_are_shown_by_number() {
        // {1: "Ada"}: the greeter's Request.
        assert_eq!(describe(&[0x0a, 3, b'A', b'd', b'a']).as_deref(), Some(r#"{1: "Ada"}"#));
        assert_eq!(describe(&[0x08, 0x96, 0x01]).as_deref(), Some("{1: 150}"));
        assert_eq!(describe(&[]).as_deref(), Some("{}"));
        let nested = ErrorReply::new("decode", "x", "m").encode(Codec::Protobuf);
        assert_eq!(describe(&nested).as_deref(), Some(r#"{1: {1: "decode", 2: "x", 3: "m"}}"#));
        assert_eq!(describe(&[0x0d, 1, 0, 0, 0]).as_deref(), Some("{1: 0x00000001}"));
        assert_eq!(describe(&[0x12, 2, 0xff, 0x00]).as_deref(), Some("{2: 0xff00}"));
    }

    #[test]
    fn fields_are_named_by_their_path() {
        let nested = ErrorReply::new("decode", "x", "m").encode(Codec::Protobuf);
        let name = |path: &[u64]| match path {
            [1] => Some("error".to_owned()),
            [1, 2] => Some("code".to_owned()),
            _ => None,
        };
        assert_eq!(describe_named(&nested, &name).as_deref(), Some(r#"{error: {1: "decode", code: "x", 3: "m"}}"#));
    }

    #[test]
    fn what_is_not_protobuf_is_refused() {
        for bad in [&b"{\"message\": \"Ada\"}"[..], &[0x0a, 5, b'A'], &[0x00, 1], &[0x0b], &[0x80; 11]] {
            assert_eq!(describe(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// Any bytes: no panic, and the text grows at most linearly with the input.
        #[test]
        fn any_bytes_are_read_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(text) = describe(&bytes) {
                prop_assert!(text.len() <= 16 + 8 * bytes.len(), "{} bytes → {} chars", bytes.len(), text.len());
            }
        }

        /// A string field written by prost reads back as that string.
        #[test]
        fn strings_read_back(text in "[a-zA-Z0-9 ,.]{0,100}", number in 1u32..1000) {
            let mut bytes = Vec::new();
            prost::encoding::string::encode(number, &text, &mut bytes);
            prop_assert_eq!(describe(&bytes), Some(format!("{{{number}: {text:?}}}")));
        }
    }
}
