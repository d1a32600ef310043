//! Our [`Message`] ↔ Kafka records: payload, UTF-8 headers (other bytes are converted
//! lossily, never a panic) and the key.

use rdkafka::message::{Header, Headers as _, OwnedHeaders};

use crate::{contract::headers::Headers, transport::Message};

/// The message a received record carries.
pub fn to_message(record: &impl rdkafka::Message) -> Message {
    let headers: Headers = record
        .headers()
        .into_iter()
        .flat_map(|list| list.iter())
        .map(|header| {
            let value = header.value.map(text).unwrap_or_default();
            (crate::contract::headers::name(header.key), value)
        })
        .collect();
    Message {
        payload: record.payload().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
        headers,
        key: record.key().map(bytes::Bytes::copy_from_slice),
    }
}

/// A header value as text: UTF-8 as it is (checked word by word), other bytes lossily.
fn text(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(value).into_owned(),
    }
}

/// Record headers for publishing.
pub fn record_headers(headers: &Headers) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers {
        owned = owned.insert(Header { key, value: Some(value.as_bytes()) });
    }
    owned
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rdkafka::{Timestamp, message::OwnedMessage};

    use super::*;

    fn record(pairs: &[(String, Vec<u8>)], key: Option<Vec<u8>>) -> OwnedMessage {
        let headers = pairs.iter().fold(OwnedHeaders::new(), |all, (name, value)| {
            all.insert(Header { key: name.as_str(), value: Some(value.as_slice()) })
        });
        OwnedMessage::new(Some(b"{}".to_vec()), key, "t".into(), Timestamp::NotAvailable, 0, 0, Some(headers))
    }

    proptest! {
        /// Any names and bytes: a message, never a panic; UTF-8 values come through as
        /// sent (the last of a repeated name), and publishing them gives the same back.
        #[test]
        fn any_record_converts(
            pairs in proptest::collection::vec(("\\PC{0,12}", proptest::collection::vec(any::<u8>(), 0..16)), 0..30),
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        ) {
            let message = to_message(&record(&pairs, key.clone()));
            prop_assert_eq!(message.key.as_deref(), key.as_deref());
            for (name, value) in &pairs {
                let last = pairs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v);
                if let (Some(last), Ok(text)) = (last, std::str::from_utf8(value))
                    && last == value
                {
                    prop_assert_eq!(message.headers.get(name).map(String::as_str), Some(text));
                }
            }
            let sent = record_headers(&message.headers);
            prop_assert_eq!(sent.count(), message.headers.len());
        }
    }

    #[test]
    fn a_record_with_100k_headers_converts() {
        let pairs: Vec<(String, Vec<u8>)> = (0..100_000).rev().map(|i| (format!("h{i:06}"), b"v".to_vec())).collect();
        let message = to_message(&record(&pairs, None));
        assert_eq!(message.headers.len(), 100_000);
    }
}
