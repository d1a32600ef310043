//! A randomized mix of good and poison greeter requests, and the check that each one
//! reached exactly the outcome the contract promises: an ok reply, or a dead-letter
//! record of the right kind and an error reply — never nothing, never the wrong one.
//! Duplicates (at-least-once) are counted, not failed.

use std::collections::HashMap;

use courier::{Message, contract::headers as h};

/// What a request of the mix must end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// An ok reply, and no dead letter.
    Ok,
    /// A dead letter of this kind with this code, and an error reply with the code.
    Dead(&'static str, &'static str),
}

/// One request: id (also its correlation id), payload, extra headers, expected outcome.
#[derive(Clone, Debug)]
pub struct Request {
    /// Correlation id.
    pub id: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers besides the correlation id and reply-to.
    pub headers: Vec<(&'static str, String)>,
    /// The outcome the contract promises.
    pub expect: Expect,
}

/// `n` requests drawn with `seed` (xorshift: the same seed gives the same mix); about
/// two in three are good.
pub fn requests(seed: u64, n: usize) -> Vec<Request> {
    let mut state = seed.max(1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let id = format!("mix-{seed}-{i}");
            let good = || format!(r#"{{"message":"{id}"}}"#).into_bytes();
            let (payload, headers, expect): (Vec<u8>, Vec<(&'static str, String)>, Expect) = match next() % 12 {
                0 => (br#"{"message":""}"#.to_vec(), vec![], Expect::Dead("permanent", "empty_message")),
                1 => (b"{not json".to_vec(), vec![], Expect::Dead("decode", "invalid_json")),
                2 => (br#"{"msg":1}"#.to_vec(), vec![], Expect::Dead("schema", "schema_violation")),
                3 => (good(), vec![(h::ATTEMPT, "zero".into())], Expect::Dead("decode", "bad_header")),
                4 => (
                    good(),
                    vec![(h::DEADLINE, "2001-01-01T00:00:00Z".into())],
                    Expect::Dead("expired", "deadline_exceeded"),
                ),
                5 => (good(), vec![(h::TRACEPARENT, "00-garbage".into())], Expect::Ok),
                _ => (good(), vec![], Expect::Ok),
            };
            Request { id, payload, headers, expect }
        })
        .collect()
}

/// Replies and dead letters seen, by correlation id.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// (status, error code) of every reply.
    pub replies: HashMap<String, Vec<(String, String)>>,
    /// (kind, code) of every dead-letter record.
    pub dead: HashMap<String, Vec<(String, String)>>,
}

impl Outcomes {
    /// Count a reply.
    pub fn reply(&mut self, message: &Message) {
        let get = |name: &str| message.headers.get(name).cloned().unwrap_or_default();
        self.replies.entry(get(h::CORRELATION_ID)).or_default().push((get(h::STATUS), get(h::ERROR_CODE)));
    }

    /// Count a dead-letter record.
    pub fn dead_letter(&mut self, message: &Message) {
        let get = |name: &str| message.headers.get(name).cloned().unwrap_or_default();
        self.dead.entry(get(h::CORRELATION_ID)).or_default().push((get(h::FAILURE_KIND), get(h::FAILURE_CODE)));
    }

    /// Whether `request` reached its whole outcome.
    pub fn finished(&self, request: &Request) -> bool {
        let replies = self.replies.get(&request.id).map_or(&[][..], Vec::as_slice);
        let dead = self.dead.get(&request.id).map_or(&[][..], Vec::as_slice);
        match request.expect {
            Expect::Ok => replies.iter().any(|(status, _)| status == "ok"),
            Expect::Dead(kind, code) => {
                dead.iter().any(|(k, c)| k == kind && c == code) && replies.iter().any(|(_, c)| c == code)
            }
        }
    }

    /// Requests without their outcome, and requests that got a wrong one.
    pub fn check(&self, requests: &[Request]) -> Verdict {
        let mut verdict = Verdict::default();
        for request in requests {
            let replies = self.replies.get(&request.id).map_or(&[][..], Vec::as_slice);
            let dead = self.dead.get(&request.id).map_or(&[][..], Vec::as_slice);
            let wrong = match request.expect {
                Expect::Ok => !dead.is_empty() || replies.iter().any(|(status, _)| status != "ok"),
                Expect::Dead(kind, code) => {
                    dead.iter().any(|(k, c)| k != kind || c != code)
                        || replies.iter().any(|(s, c)| s != "error" || c != code)
                }
            };
            if wrong {
                verdict.wrong.push(format!(
                    "{}: expected {:?}, got replies {replies:?}, dead {dead:?}",
                    request.id, request.expect
                ));
            } else if !self.finished(request) {
                verdict.lost.push(request.id.clone());
            }
            verdict.duplicates += replies.len().saturating_sub(1);
        }
        verdict
    }
}

/// The result of [`Outcomes::check`].
#[derive(Debug, Default)]
pub struct Verdict {
    /// Ids without their whole outcome.
    pub lost: Vec<String>,
    /// Descriptions of wrong outcomes.
    pub wrong: Vec<String>,
    /// Replies beyond the first per request.
    pub duplicates: usize,
}

/// A seed for this run: `COURIER_TEST_SEED` to repeat one, else the clock.
pub fn seed() -> u64 {
    std::env::var("COURIER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    })
}
