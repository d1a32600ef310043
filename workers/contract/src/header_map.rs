//! [`Headers`]: a message's headers, names to UTF-8 values.
//!
//! A message carries a handful of headers, so they are a vector sorted by name rather
//! than a tree: building, copying and dropping one costs an allocation per value and one
//! for the vector, not a tree's nodes (a worker builds two per message).

use std::{any::Any, borrow::Cow, fmt, ops::Index, sync::Arc};

/// Message headers: one value per name, iterated in name order. Values that are not text
/// on the wire are converted by the transport (never a panic). Names are usually the
/// contract's constants (borrowed, see [`super::headers::name`]), so building and copying
/// headers allocates only the values.
#[derive(Clone, Default)]
pub struct Headers {
    /// Sorted by name, names unique.
    entries: Vec<(Cow<'static, str>, String)>,
    /// The headers as the transport received them, where the text view loses something
    /// (RabbitMQ's typed values: integers, timestamps, tables…): a copy of these headers
    /// (a dead letter, a retry, a replay) then goes out with the original types. Opaque to
    /// the runtime, shared by copies, and not part of equality.
    originals: Option<Arc<dyn Any + Send + Sync>>,
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Headers {}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// No headers, with room for `capacity` without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { entries: Vec::with_capacity(capacity), originals: None }
    }

    /// Keep the transport's own view of these headers (see the field's doc).
    pub fn set_originals(&mut self, originals: Arc<dyn Any + Send + Sync>) {
        self.originals = Some(originals);
    }

    /// The transport's own view of these headers, when one was kept.
    pub fn originals(&self) -> Option<&(dyn Any + Send + Sync)> {
        self.originals.as_deref()
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of every name and value (what they add to a message's size on the wire, give
    /// or take the broker's framing).
    pub fn byte_len(&self) -> usize {
        self.entries.iter().map(|(name, value)| name.len() + value.len()).sum()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(known, _)| known.as_ref().cmp(name))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|at| &self.entries[at].1)
    }

    /// Whether `name` is present.
    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Set `name` to `value`; returns the value it replaces.
    pub fn insert(&mut self, name: Cow<'static, str>, value: String) -> Option<String> {
        // Headers built in name order (a reply's) append without a search.
        if self.entries.last().is_none_or(|(last, _)| last.as_ref() < name.as_ref()) {
            self.entries.push((name, value));
            return None;
        }
        match self.find(&name) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (name, value));
                None
            }
        }
    }

    /// Remove `name`; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.find(name).ok().map(|at| self.entries.remove(at).1)
    }

    /// The value of `name`, set to `value()` first when absent.
    pub fn get_or_insert_with(&mut self, name: Cow<'static, str>, value: impl FnOnce() -> String) -> &mut String {
        let at = match self.find(&name) {
            Ok(at) => at,
            Err(at) => {
                self.entries.insert(at, (name, value()));
                at
            }
        };
        &mut self.entries[at].1
    }

    /// Names, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &Cow<'static, str>> {
        self.entries.iter().map(|(name, _)| name)
    }

    /// Names and values, in name order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Cow<'static, str>, &String)> {
        self.into_iter()
    }
}

impl Index<&str> for Headers {
    type Output = String;

    /// The value of `name`; panics when absent (as a map's index does).
    fn index(&self, name: &str) -> &String {
        self.get(name).unwrap_or_else(|| panic!("no header {name:?}"))
    }
}

/// Later values of a repeated name replace earlier ones. Sorts once (n log n): inserting
/// one by one would move the vector's tail each time, quadratic for a hostile record with
/// many headers in reverse order.
impl FromIterator<(Cow<'static, str>, String)> for Headers {
    fn from_iter<I: IntoIterator<Item = (Cow<'static, str>, String)>>(iter: I) -> Self {
        let mut entries: Vec<(Cow<'static, str>, String)> = iter.into_iter().collect();
        // Stable: of equal names, the later one stays later; it is the one kept, in place.
        entries.sort_by(|(a, _), (b, _)| a.cmp(b));
        let mut kept = 0;
        for next in 1..=entries.len() {
            if entries.get(next).is_none_or(|(name, _)| *name != entries[next - 1].0) {
                entries.swap(kept, next - 1);
                kept += 1;
            }
        }
        entries.truncate(kept);
        Self { entries, originals: None }
    }
}

impl IntoIterator for Headers {
    type Item = (Cow<'static, str>, String);
    type IntoIter = std::vec::IntoIter<(Cow<'static, str>, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'h> IntoIterator for &'h Headers {
    type Item = (&'h Cow<'static, str>, &'h String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'h, (Cow<'static, str>, String)>,
        fn(&'h (Cow<'static, str>, String)) -> (&'h Cow<'static, str>, &'h String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(name, value)| (name, value))
    }
}

/// A JSON object (the DLQ report shows headers so).
impl serde::Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> Headers {
        pairs.iter().map(|(k, v)| (Cow::Borrowed(*k), (*v).to_owned())).collect()
    }

    #[test]
    fn names_are_unique_and_iterated_in_order() {
        let mut h = headers(&[("b", "1"), ("a", "2"), ("c", "3"), ("a", "4")]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(), ["a=4", "b=1", "c=3"]);
        assert_eq!(h.insert("b".into(), "5".into()), Some("1".into()));
        assert_eq!(h.insert("0".into(), "6".into()), None);
        assert_eq!(h["b"], "5");
        assert_eq!(h.iter().map(|(k, _)| k.as_ref()).collect::<Vec<_>>(), ["0", "a", "b", "c"]);
    }

    #[test]
    fn lookups_and_removal() {
        let mut h = headers(&[("x", "1"), ("y", "2")]);
        assert_eq!(h.get("y").map(String::as_str), Some("2"));
        assert_eq!(h.get("z"), None);
        assert!(h.contains_key("x"));
        assert_eq!(h.remove("x"), Some("1".into()));
        assert_eq!(h.remove("x"), None);
        assert!(!h.contains_key("x"));
        assert_eq!(h.get_or_insert_with("y".into(), || "3".into()), "2");
        assert_eq!(h.get_or_insert_with("w".into(), || "4".into()), "4");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn a_hostile_header_count_is_not_quadratic() {
        // 200k names in reverse order: one by one, each insert moved the whole tail
        // (~2·10^10 moves); collected, one sort.
        let started = std::time::Instant::now();
        let h: Headers = (0..200_000).rev().map(|i| (Cow::Owned(format!("h{i:07}")), String::new())).collect();
        assert_eq!(h.len(), 200_000);
        assert!(h.keys().zip(h.keys().skip(1)).all(|(a, b)| a < b));
        // Generous for a debug build on a loaded machine; the quadratic version takes minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }

    proptest::proptest! {
        /// Collecting equals inserting one by one (the model), for any names and repeats.
        #[test]
        fn collecting_equals_inserting(pairs in proptest::collection::vec(("[a-d]{0,2}", "[x-z]{0,2}"), 0..40)) {
            let collected: Headers = pairs.iter().map(|(k, v)| (Cow::Owned(k.clone()), v.clone())).collect();
            let mut inserted = Headers::new();
            for (k, v) in &pairs {
                inserted.insert(Cow::Owned(k.clone()), v.clone());
            }
            proptest::prop_assert_eq!(collected, inserted);
        }
    }

    #[test]
    fn equality_does_not_depend_on_insertion_order() {
        assert_eq!(headers(&[("a", "1"), ("b", "2")]), headers(&[("b", "2"), ("a", "1")]));
        assert_ne!(headers(&[("a", "1")]), headers(&[("a", "2")]));
    }
}
