//! Our [`Message`] ↔ Kafka records: payload, UTF-8 headers (other bytes are converted
//! lossily, never a panic) and the key.

use rdkafka::{
    Message as _,
    message::{BorrowedMessage, Header, Headers as _, OwnedHeaders},
};

use crate::{contract::headers::Headers, transport::Message};

/// The message a received record carries.
pub fn to_message(record: &BorrowedMessage<'_>) -> Message {
    let headers: Headers = record
        .headers()
        .into_iter()
        .flat_map(|list| list.iter())
        .map(|header| {
            let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            (crate::contract::headers::name(header.key), value)
        })
        .collect();
    Message {
        payload: record.payload().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
        headers,
        key: record.key().map(bytes::Bytes::copy_from_slice),
    }
}

/// Record headers for publishing.
pub fn headers(headers: &Headers) -> OwnedHeaders {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers {
        owned = owned.insert(Header { key, value: Some(value.as_bytes()) });
    }
    owned
}
