//! Replies seen by a black-box test.

/// Replies seen, by correlation id and by the instance that sent them.
#[derive(Debug, Default)]
pub struct Replies {
    /// Reply count per correlation id (more than 1 = duplicate).
    pub by_id: std::collections::HashMap<String, usize>,
    /// Reply count per `courier-replied-by`.
    pub by_instance: std::collections::HashMap<String, usize>,
}

impl Replies {
    /// Replies beyond the first per request.
    pub fn duplicates(&self) -> usize {
        self.by_id.values().map(|n| n - 1).sum()
    }

    /// Ids in `ids` without a reply.
    pub fn missing<'a>(&self, ids: &'a [String]) -> Vec<&'a String> {
        ids.iter().filter(|id| !self.by_id.contains_key(*id)).collect()
    }
}
