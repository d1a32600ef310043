//! A dead-letter store read only until a deadline: past it, the store says it has no more
//! records, so a dry run over a long queue ends with what it read (marked partial) instead
//! of failing. A record whose read was cut off stays in the queue (on RabbitMQ it returns
//! when the channel closes), as any record read and not settled.

use tokio::time::Instant;

use crate::dlq::{DeadLetterError, DeadLetterStore, Record, Settlement};

/// `store`, read until `deadline`.
#[derive(Debug)]
pub struct Until<'a, S> {
    /// The store read.
    store: &'a mut S,
    /// When reading stops.
    deadline: Instant,
    /// Whether the deadline cut the reading short.
    pub ran_out: bool,
}

impl<'a, S: DeadLetterStore> Until<'a, S> {
    /// Read `store` until `deadline`.
    pub fn new(store: &'a mut S, deadline: Instant) -> Self {
        Self { store, deadline, ran_out: false }
    }
}

impl<S: DeadLetterStore> DeadLetterStore for Until<'_, S> {
    fn pending(&self) -> Option<u64> {
        self.store.pending()
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, DeadLetterError> {
        if self.ran_out {
            return Ok(Vec::new());
        }
        match tokio::time::timeout_at(self.deadline, self.store.next_batch(max)).await {
            Ok(batch) => batch,
            Err(_) => {
                self.ran_out = true;
                Ok(Vec::new())
            }
        }
    }

    async fn exists(&mut self, destination: &str) -> Result<bool, DeadLetterError> {
        self.store.exists(destination).await
    }

    async fn settle(&mut self, batch: Vec<Settlement>) -> Result<(), DeadLetterError> {
        self.store.settle(batch).await
    }

    /// The store it reads stays open: its owner closes it.
    async fn close(self) -> Result<(), DeadLetterError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dlq::{Operation, RunOptions};
    use courier::transport::{Message, dead_letters::RecordId};

    /// One batch of `n` records a second, for ever.
    struct Slow(u64);

    impl DeadLetterStore for Slow {
        fn pending(&self) -> Option<u64> {
            None
        }
        async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, DeadLetterError> {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let batch = (0..max as u64)
                .map(|i| Record { id: RecordId::Position(self.0 + i), message: Message::default() })
                .collect();
            self.0 += max as u64;
            Ok(batch)
        }
        async fn exists(&mut self, _: &str) -> Result<bool, DeadLetterError> {
            Ok(true)
        }
        async fn settle(&mut self, _: Vec<Settlement>) -> Result<(), DeadLetterError> {
            Ok(())
        }
        async fn close(self) -> Result<(), DeadLetterError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_past_its_deadline_ends_with_what_it_read() {
        let mut slow = Slow(1);
        let mut until = Until::new(&mut slow, Instant::now() + Duration::from_millis(3500));
        let options = RunOptions { dry_run: true, batch: 10, ..RunOptions::default() };
        let summary = crate::dlq::run::run(&mut until, &Operation::Purge, &options, &mut |_| {}).await;
        assert_eq!(summary.ok().map(|s| (s.read, s.purged)), Some((30, 30)));
        assert!(until.ran_out);
        assert!(until.next_batch(10).await.is_ok_and(|b| b.is_empty()), "stays ended");
    }
}
