//! Where deliveries run: one long-lived task per runtime thread, each polling its share of
//! the deliveries as futures of its own. A task per delivery would cost an aligned
//! allocation, a turn of the scheduler and a join set's bookkeeping per message; one task
//! for all deliveries would keep them on one core (docs/benchmarks.md).

use std::{
    any::Any,
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use futures::{FutureExt as _, StreamExt as _, stream::FuturesUnordered};
use tokio::{sync::mpsc, task::JoinSet};
use tracing::error;

use crate::handler::panic_text;

/// A delivery (or a delivery given back), boxed where it is created: a box is moved by
/// its pointer, and a future is copied whole whenever it is moved (into a box too).
type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The delivery loops, and the deliveries handed to them that have not ended.
pub(super) struct Runners {
    /// One queue per loop; dropped to tell the loops that no more deliveries come.
    queues: Vec<mpsc::UnboundedSender<Job>>,
    /// The loop the next delivery goes to (they take turns).
    next: usize,
    /// The loops. Aborting one drops its deliveries' futures: their unsettled ackers return
    /// the messages to the broker.
    loops: JoinSet<()>,
    /// Deliveries handed to a loop and not ended.
    running: Arc<AtomicUsize>,
}

impl Runners {
    /// Start `count` loops (at least one) on the current runtime.
    pub(super) fn new(count: usize) -> Self {
        let running = Arc::new(AtomicUsize::new(0));
        let mut loops = JoinSet::new();
        let queues = (0..count.max(1))
            .map(|_| {
                let (queue, jobs) = mpsc::unbounded_channel();
                loops.spawn(run(jobs, Arc::clone(&running)));
                queue
            })
            .collect();
        Self { queues, next: 0, loops, running }
    }

    /// As many loops as the runtime has threads.
    pub(super) fn per_thread() -> Self {
        Self::new(tokio::runtime::Handle::current().metrics().num_workers())
    }

    /// Run `job` in the next loop.
    pub(super) fn run(&mut self, job: Job) {
        self.running.fetch_add(1, Ordering::Relaxed);
        let queue = &self.queues[self.next];
        self.next = (self.next + 1) % self.queues.len();
        if queue.send(job).is_err() {
            // Only a loop that ended can refuse, and loops end only once their queue is
            // dropped (or a bug aborted one): the job, dropped, returns its message.
            self.running.fetch_sub(1, Ordering::Relaxed);
            error!("A delivery loop ended early; its message returns to the broker.");
        }
    }

    /// Deliveries running.
    pub(super) fn len(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Take no more deliveries, give the running ones `grace` to end, and drop the rest
    /// (their messages return to the broker): how many were dropped.
    pub(super) async fn finish(mut self, grace: Duration) -> usize {
        self.queues.clear();
        let ended = tokio::time::timeout(grace, async {
            while let Some(done) = self.loops.join_next().await {
                if let Err(error) = done {
                    error!(%error, "A delivery loop failed; its messages return to the broker.");
                }
            }
        })
        .await
        .is_ok();
        if ended {
            return 0;
        }
        let unfinished = self.len();
        self.loops.abort_all();
        while self.loops.join_next().await.is_some() {}
        unfinished
    }
}

/// One loop: take the jobs sent to it and poll them until each ends, until the queue is
/// dropped and every job has ended. A job that panics ends alone (its message returns
/// to the broker).
async fn run(mut jobs: mpsc::UnboundedReceiver<Job>, running: Arc<AtomicUsize>) {
    let mut set = FuturesUnordered::new();
    let mut open = true;
    poll_fn(|cx| {
        while open {
            match jobs.poll_recv(cx) {
                Poll::Ready(Some(job)) => set.push(AssertUnwindSafe(job).catch_unwind()),
                Poll::Ready(None) => open = false,
                Poll::Pending => break,
            }
        }
        // `FuturesUnordered` yields (wakes itself and returns `Pending`) after a round of
        // its futures: the loop is then polled again.
        while let Poll::Ready(Some(ended)) = set.poll_next_unpin(cx) {
            running.fetch_sub(1, Ordering::Relaxed);
            if let Err(panic) = ended {
                report(panic.as_ref());
            }
        }
        if open || !set.is_empty() { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
}

/// Only a bug in the runtime itself can make a delivery panic: handler panics are caught
/// by the pipeline.
fn report(panic: &(dyn Any + Send)) {
    error!(panic = panic_text(panic), "A delivery failed; its message returns to the broker.");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// Sets its flag when dropped: stands for an unsettled acker.
    struct Returned(Arc<AtomicBool>);

    impl Drop for Returned {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_job_runs_to_its_end_and_finishing_waits_for_them() {
        let mut runners = Runners::new(2);
        let ended = Arc::new(AtomicUsize::new(0));
        for n in 0..10u64 {
            let ended = Arc::clone(&ended);
            runners.run(Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(n * 10)).await;
                ended.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert_eq!(runners.len(), 10);
        assert_eq!(runners.finish(Duration::from_secs(1)).await, 0);
        assert_eq!(ended.load(Ordering::SeqCst), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_job_ends_alone() {
        let mut runners = Runners::new(1);
        let ended = Arc::new(AtomicBool::new(false));
        runners.run(Box::pin(async { panic!("a bug") }));
        let flag = Arc::clone(&ended);
        runners.run(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(runners.len(), 1, "the panicked job has ended, the other runs");
        assert_eq!(runners.finish(Duration::from_secs(1)).await, 0);
        assert!(ended.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_grace_the_unfinished_jobs_are_dropped() {
        let mut runners = Runners::new(2);
        let returned = Arc::new(AtomicBool::new(false));
        let acker = Returned(Arc::clone(&returned));
        runners.run(Box::pin(async move {
            let _acker = acker;
            std::future::pending::<()>().await;
        }));
        runners.run(Box::pin(async {}));
        assert_eq!(runners.finish(Duration::from_secs(5)).await, 1);
        assert!(returned.load(Ordering::SeqCst), "the unfinished job was dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loop_per_runtime_thread_takes_turns() {
        let mut runners = Runners::per_thread();
        assert_eq!(runners.queues.len(), 2);
        let ended = Arc::new(AtomicUsize::new(0));
        for _ in 0..1_000 {
            let ended = Arc::clone(&ended);
            runners.run(Box::pin(async move {
                tokio::task::yield_now().await;
                ended.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert_eq!(runners.finish(Duration::from_secs(10)).await, 0);
        assert_eq!(ended.load(Ordering::SeqCst), 1_000);
        assert_eq!(Arc::strong_count(&ended), 1, "every job's future was dropped");
    }
}
