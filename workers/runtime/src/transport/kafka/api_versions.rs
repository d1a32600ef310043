//! Which Kafka APIs a broker serves, from its ApiVersions answer: `courier dlq` needs
//! transactions (EndTxn) and must refuse a broker without them before it writes anything
//! (tansu 0.6 accepts transactional produces and fails only at EndTxn, after the outputs
//! are visible). librdkafka does not expose the answer, so this asks itself, over plain
//! TCP: version 0 of the request, which every broker answers.
//!
//! The codec is pure and tested here; [`probe`] is the thin I/O around it.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

/// Kafka's API key of EndTxn (commit or abort a transaction).
pub(crate) const END_TXN: i16 = 26;
/// Kafka's API key of DescribeConfigs (a topic's settings).
pub(crate) const DESCRIBE_CONFIGS: i16 = 32;
/// Kafka's API key of ApiVersions.
const API_VERSIONS: i16 = 18;
/// Largest answer accepted (a broker lists ~70 APIs at 6 bytes each).
const MAX_ANSWER: usize = 64 * 1024;

/// The request, size prefix included: ApiVersions v0, correlation id 1, client id `courier`.
pub(crate) fn request() -> Vec<u8> {
    let client = b"courier";
    let mut body = Vec::with_capacity(10 + client.len());
    body.extend_from_slice(&API_VERSIONS.to_be_bytes());
    body.extend_from_slice(&0_i16.to_be_bytes());
    body.extend_from_slice(&1_i32.to_be_bytes());
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    let mut framed = (body.len() as i32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    framed
}

/// The API keys an answer (without its size prefix) lists; `None` when it is not a
/// well-formed ApiVersions v0 answer without error.
pub(crate) fn api_keys(answer: &[u8]) -> Option<Vec<i16>> {
    let i16_at = |at: usize| Some(i16::from_be_bytes(answer.get(at..at + 2)?.try_into().ok()?));
    let i32_at = |at: usize| Some(i32::from_be_bytes(answer.get(at..at + 4)?.try_into().ok()?));
    let (_correlation, error, count) = (i32_at(0)?, i16_at(4)?, i32_at(6)?);
    if error != 0 || count < 0 {
        return None;
    }
    let count = usize::try_from(count).ok()?;
    if answer.len() < 10 + count.checked_mul(6)? {
        return None;
    }
    (0..count).map(|i| i16_at(10 + i * 6)).collect()
}

/// Ask the first reachable broker of `bootstrap` (`host:port[,host:port]`) which APIs it
/// serves. `None` when none answers in plain Kafka protocol within `timeout` (TLS or SASL
/// listeners, say): the caller then cannot tell.
pub(crate) fn probe(bootstrap: &str, timeout: Duration) -> Option<Vec<i16>> {
    bootstrap.split(',').map(str::trim).filter(|b| !b.is_empty()).find_map(|broker| ask(broker, timeout))
}

fn ask(broker: &str, timeout: Duration) -> Option<Vec<i16>> {
    let address = broker.to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(&request()).ok()?;
    let mut size = [0_u8; 4];
    stream.read_exact(&mut size).ok()?;
    let size = usize::try_from(i32::from_be_bytes(size)).ok().filter(|n| *n <= MAX_ANSWER)?;
    let mut answer = vec![0_u8; size];
    stream.read_exact(&mut answer).ok()?;
    api_keys(&answer)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_request_is_api_versions_v0() {
        let framed = request();
        assert_eq!(&framed[..4], &(framed.len() as i32 - 4).to_be_bytes());
        assert_eq!(&framed[4..8], &[0, 18, 0, 0], "key 18, version 0");
    }

    fn answer(error: i16, keys: &[i16]) -> Vec<u8> {
        let mut out = 1_i32.to_be_bytes().to_vec();
        out.extend_from_slice(&error.to_be_bytes());
        out.extend_from_slice(&(keys.len() as i32).to_be_bytes());
        for key in keys {
            out.extend_from_slice(&key.to_be_bytes());
            out.extend_from_slice(&0_i16.to_be_bytes());
            out.extend_from_slice(&3_i16.to_be_bytes());
        }
        out
    }

    #[test]
    fn answers_are_read() {
        assert_eq!(api_keys(&answer(0, &[0, 1, 26])), Some(vec![0, 1, 26]));
        assert_eq!(api_keys(&answer(35, &[0])), None, "an error answer");
        let mut cut = answer(0, &[0, 1]);
        cut.truncate(cut.len() - 1);
        assert_eq!(api_keys(&cut), None, "a truncated answer");
    }

    proptest! {
        /// Any bytes: an answer or `None`, never a panic, never a key list longer than the bytes allow.
        #[test]
        fn any_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(keys) = api_keys(&bytes) {
                prop_assert!(10 + keys.len() * 6 <= bytes.len());
            }
        }
    }
}
