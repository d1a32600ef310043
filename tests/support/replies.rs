//! Replies seen by a black-box test.

/// Replies seen, by correlation id and by the instance that sent them.
#[derive(Debug, Default)]
pub struct Replies {
    /// Reply count per correlation id (more than 1 = duplicate).
    pub by_id: std::collections::HashMap<String, usize>,
    /// Reply count per `courier-replied-by`.
    pub by_instance: std::collections::HashMap<String, usize>,
    /// Reply count per `courier-status` (`ok`, `error`).
    pub by_status: std::collections::HashMap<String, usize>,
}

impl Replies {
    /// Count a reply from its correlation id, replying instance and status.
    pub fn add(&mut self, correlation_id: String, replied_by: String, status: String) {
        *self.by_id.entry(correlation_id).or_default() += 1;
        *self.by_instance.entry(replied_by).or_default() += 1;
        *self.by_status.entry(status).or_default() += 1;
    }

    /// Replies beyond the first per request.
    pub fn duplicates(&self) -> usize {
        self.by_id.values().map(|n| n - 1).sum()
    }

    /// Ids in `ids` without a reply.
    pub fn missing<'a>(&self, ids: &'a [String]) -> Vec<&'a String> {
        ids.iter().filter(|id| !self.by_id.contains_key(*id)).collect()
    }

    /// Print `what` happened — answered, lost, duplicates — and fail when a request of
    /// `ids` has no reply, with `log` (the worker's tail) in the message.
    pub fn assert_none_lost(&self, what: &str, ids: &[String], log: impl FnOnce() -> String) {
        let missing = self.missing(ids);
        println!(
            "{what}: {} of {} answered, {} lost, {} duplicates",
            self.by_id.len(),
            ids.len(),
            missing.len(),
            self.duplicates()
        );
        assert!(missing.is_empty(), "lost {}, e.g. {:?}\n{}", missing.len(), &missing[..missing.len().min(5)], log());
    }
}
