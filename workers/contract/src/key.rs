//! Kafka record keys as text, for people: a key is bytes (a Java `LongSerializer` key is
//! eight of them), carried byte for byte into replies, retry copies, dead letters and
//! replays. Shown as itself when it is printable UTF-8, else as `hex:<lowercase hex>`;
//! the same two forms are accepted on the command line (`courier dlq … --key`).

use bytes::Bytes;

/// The text form of `key`: itself when printable UTF-8 (and not itself starting with
/// `hex:`), else `hex:` and its bytes in hex.
pub fn display(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.starts_with("hex:") && !text.chars().any(char::is_control) => text.to_owned(),
        _ => {
            let mut out = String::with_capacity(4 + key.len() * 2);
            out.push_str("hex:");
            for byte in key {
                out.push_str(&format!("{byte:02x}"));
            }
            out
        }
    }
}

/// The key a text form names: `hex:<hex digits>` is bytes, anything else its UTF-8.
pub fn parse(text: &str) -> Result<Bytes, String> {
    let Some(hex) = text.strip_prefix("hex:") else {
        return Ok(Bytes::copy_from_slice(text.as_bytes()));
    };
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{text:?}: after hex: give an even number of hex digits"));
    }
    let digit = |b: u8| (b as char).to_digit(16).map_or(0, |d| d as u8);
    Ok(hex.as_bytes().chunks(2).map(|pair| digit(pair[0]) << 4 | digit(pair[1])).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn printable_keys_are_themselves_and_others_hex() {
        assert_eq!(display(b"order-7"), "order-7");
        assert_eq!(display(&42_i64.to_be_bytes()), "hex:000000000000002a");
        assert_eq!(display(b"hex:ab"), "hex:6865783a6162", "a key that looks like the hex form is shown as hex");
        assert_eq!(parse("hex:000000000000002a").expect("hex"), Bytes::from(42_i64.to_be_bytes().to_vec()));
        assert_eq!(parse("order-7").expect("text"), Bytes::from_static(b"order-7"));
        assert!(parse("hex:abc").is_err());
        assert!(parse("hex:zz").is_err());
    }

    proptest! {
        #[test]
        fn every_key_round_trips(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(parse(&display(&key)).expect("its own form parses"), Bytes::from(key));
        }
    }
}
