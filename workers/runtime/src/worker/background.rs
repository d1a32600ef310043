//! The tasks a worker runs beside its consume loop (the HTTP endpoints, the inbox's
//! expiry), under one owner that stops them, and waits for them, on every way out of
//! [`run`](super::run): a worker that stops, and one that cannot start.

use std::future::Future;

use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};

/// The owner of a worker's background tasks. [`Background::stop`] ends them and waits for
/// them; if `run` is dropped midway instead (its caller gave up on it), dropping the owner
/// tells them to end, without waiting.
#[derive(Debug)]
pub(super) struct Background {
    /// Ends every task: cancelled by `stop`, or by `_on_drop`.
    stopping: CancellationToken,
    /// The tasks, to wait for.
    tasks: TaskTracker,
    /// Cancels `stopping` when the owner is dropped without `stop`.
    _on_drop: DropGuard,
}

impl Background {
    pub(super) fn new() -> Self {
        let stopping = CancellationToken::new();
        Self { _on_drop: stopping.clone().drop_guard(), stopping, tasks: TaskTracker::new() }
    }

    /// Run `task` until it ends or the owner stops it; a stopped task is dropped where it
    /// waits (a listener it holds is closed).
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stopping = self.stopping.clone();
        self.tasks.spawn(async move {
            stopping.run_until_cancelled_owned(task).await;
        });
    }

    /// The outcome of a start-up `step`; when it failed, the tasks are stopped first, so
    /// that a worker that cannot start returns its error with nothing left running.
    pub(super) async fn or_stop<T, E>(&self, step: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let outcome = step.await;
        if outcome.is_err() {
            self.stop().await;
        }
        outcome
    }

    /// End the tasks and wait until they have.
    pub(super) async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// Sets its flag when dropped: the task holding it has ended.
    struct Ended(Arc<AtomicBool>);

    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A task that never ends by itself, and the flag its end sets.
    fn forever(background: &Background) -> Arc<AtomicBool> {
        let ended = Arc::new(AtomicBool::new(false));
        let guard = Ended(Arc::clone(&ended));
        background.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        ended
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_step_stops_the_tasks_before_it_returns() {
        let background = Background::new();
        let ended = forever(&background);
        assert_eq!(background.or_stop(async { Ok::<_, ()>(7) }).await, Ok(7));
        tokio::task::yield_now().await;
        assert!(!ended.load(Ordering::SeqCst), "a step that succeeds leaves them running");
        assert_eq!(background.or_stop(async { Err::<(), _>("refused") }).await, Err("refused"));
        assert!(ended.load(Ordering::SeqCst), "ended by the time the error is returned");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_the_tasks() {
        let background = Background::new();
        let ended = forever(&background);
        background.stop().await;
        assert!(ended.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_owner_tells_its_tasks_to_end() {
        let background = Background::new();
        let ended = forever(&background);
        let tasks = background.tasks.clone();
        drop(background);
        tasks.close();
        tasks.wait().await;
        assert!(ended.load(Ordering::SeqCst));
    }
}
