//! Our [`Message`] ↔ Kafka records: payload, UTF-8 headers (other bytes are converted
//! lossily, never a panic) and the key.

use rdkafka::{
    Message as _,
    message::{BorrowedMessage, Header, Headers as _, OwnedHeaders},
};

use crate::{contract::headers::Headers, transport::Message};

/// The message a received record carries.
pub fn to_message(record: &BorrowedMessage<'_>) -> Message {
    let list = record.headers();
    let mut headers = Headers::with_capacity(list.map_or(0, |list| list.count()));
    if let Some(list) = list {
        for header in list.iter() {
            let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            headers.insert(crate::contract::headers::name(header.key), value);
        }
    }
    Message {
        payload: record.payload().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
        headers,
        key: record.key().map(|k| String::from_utf8_lossy(k).into_owned()),
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
