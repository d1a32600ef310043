//! What a transport knows about destinations it published to: which exist (bounded in
//! number, asked again after [`EXISTS_FOR`]) and which were missing a moment ago
//! (forgotten after [`MISSING_FOR`]), so a
//! burst of publishes to one name asks the broker once, and a queue created a moment
//! later is found.

use std::time::{Duration, Instant};

/// How long a "no such destination" answer is believed.
pub(crate) const MISSING_FOR: Duration = Duration::from_secs(1);
/// How long an "exists" answer is believed (a client's exclusive reply queue goes away
/// with its client; an unroutable publish is then found by asking again).
pub(crate) const EXISTS_FOR: Duration = Duration::from_secs(60);
/// At most this many names are remembered either way; past it the oldest answers go.
pub(crate) const CAPACITY: usize = 10_000;

/// Existence answers by name.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// Name → (exists, when the broker said so).
    answers: foldhash::HashMap<String, (bool, Instant)>,
}

impl Known {
    /// The believed answer for `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Option<bool> {
        self.get_at(name, Instant::now())
    }

    fn get_at(&self, name: &str, now: Instant) -> Option<bool> {
        match self.answers.get(name) {
            Some((true, at)) if now.duration_since(*at) < EXISTS_FOR => Some(true),
            Some((false, at)) if now.duration_since(*at) < MISSING_FOR => Some(false),
            _ => None,
        }
    }

    /// Remember the broker's answer for `name`.
    pub(crate) fn set(&mut self, name: &str, exists: bool) {
        self.set_at(name, exists, Instant::now());
    }

    fn set_at(&mut self, name: &str, exists: bool, now: Instant) {
        if self.answers.len() >= CAPACITY && !self.answers.contains_key(name) {
            // Expired "missing" answers go first; if none, the oldest half.
            self.answers
                .retain(|_, (exists, at)| now.duration_since(*at) < if *exists { EXISTS_FOR } else { MISSING_FOR });
            if self.answers.len() >= CAPACITY {
                let mut ages: Vec<Instant> = self.answers.values().map(|(_, at)| *at).collect();
                let (_, median, _) = ages.select_nth_unstable(CAPACITY / 2);
                let cut = *median;
                self.answers.retain(|_, (_, at)| *at > cut);
            }
        }
        self.answers.insert(name.to_owned(), (exists, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_names_are_remembered_and_missing_ones_briefly() {
        let mut known = Known::default();
        let start = Instant::now();
        assert_eq!(known.get_at("a", start), None);
        known.set_at("a", true, start);
        known.set_at("b", false, start);
        let later = start + MISSING_FOR * 10;
        assert_eq!(known.get_at("a", later), Some(true));
        assert_eq!(known.get_at("a", start + EXISTS_FOR), None, "asked again after a minute");
        assert_eq!(known.get_at("b", start + MISSING_FOR / 2), Some(false));
        assert_eq!(known.get_at("b", start + MISSING_FOR), None, "asked again after a second");
        known.set_at("a", false, later);
        assert_eq!(known.get_at("a", later), Some(false), "a deleted destination is forgotten");
    }

    #[test]
    fn memory_is_bounded() {
        let mut known = Known::default();
        let start = Instant::now();
        for i in 0..(CAPACITY * 3) {
            known.set_at(&format!("q{i}"), i % 2 == 0, start + Duration::from_millis(i as u64));
            assert!(known.answers.len() <= CAPACITY);
        }
        let newest = format!("q{}", CAPACITY * 3 - 2);
        assert_eq!(known.get_at(&newest, start + Duration::from_secs(40)), Some(true), "the newest answers stay");
    }
}
