//! The console's actions while they run and after: what each is doing to which queue, in
//! whose name, and how far it got. A page polls its job; the last [`KEPT`] jobs stay listed.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime},
};

use crate::dlq::Summary;

/// Jobs remembered, newest kept.
const KEPT: usize = 100;

/// One action started from the console.
#[derive(Debug)]
pub struct Job {
    /// Its number, in the page's address.
    pub id: u64,
    /// What it does, to which records, in whose name.
    pub plan: Plan,
    /// When.
    pub started: SystemTime,
    /// The same, for the elapsed time.
    clock: Instant,
    /// How far it got.
    state: Mutex<State>,
}

/// How far a job got.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Records read and what became of them.
    pub summary: Summary,
    /// `None` while running; then `Ok` or the error that ended it.
    pub ended: Option<Result<(), String>>,
    /// Seconds it ran, once ended.
    pub took: Option<f64>,
}

impl Job {
    /// What it has done so far.
    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Seconds since it started (or that it ran).
    pub fn elapsed(&self) -> f64 {
        self.state().took.unwrap_or_else(|| self.clock.elapsed().as_secs_f64())
    }

    /// Report progress.
    pub fn progress(&self, summary: Summary) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).summary = summary;
    }

    /// Report the end.
    pub fn end(&self, outcome: Result<Summary, String>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.took = Some(self.clock.elapsed().as_secs_f64());
        match outcome {
            Ok(summary) => {
                state.summary = summary;
                state.ended = Some(Ok(()));
            }
            Err(error) => state.ended = Some(Err(error)),
        }
    }

    /// Whether it still runs.
    pub fn running(&self) -> bool {
        self.state().ended.is_none()
    }
}

/// What a new job is.
#[derive(Debug)]
pub struct Plan {
    /// `replay`, `park` or `purge`.
    pub action: &'static str,
    /// The queue it reads.
    pub queue: String,
    /// Which records, in words.
    pub selection: String,
    /// Where they go, in words.
    pub destination: String,
    /// Records per second.
    pub rate: u32,
    /// Who starts it.
    pub operator: String,
}

/// Every job the console remembers.
#[derive(Debug, Default)]
pub struct Jobs {
    /// The next job's number.
    next: AtomicU64,
    /// Newest last.
    list: Mutex<VecDeque<Arc<Job>>>,
}

impl Jobs {
    /// Record a new job, running.
    pub fn add(&self, plan: Plan) -> Arc<Job> {
        let job = Arc::new(Job {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            plan,
            started: SystemTime::now(),
            clock: Instant::now(),
            state: Mutex::new(State::default()),
        });
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() >= KEPT
            && let Some(done) = list.iter().position(|job| !job.running())
        {
            list.remove(done);
        }
        list.push_back(Arc::clone(&job));
        job
    }

    /// Job `id`, if remembered.
    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner).iter().find(|job| job.id == id).cloned()
    }

    /// The remembered jobs, newest first.
    pub fn newest_first(&self) -> Vec<Arc<Job>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: u32) -> Plan {
        Plan {
            action: "replay",
            queue: "q.dlq".into(),
            selection: "every record".into(),
            destination: "q".into(),
            rate: n,
            operator: "me".into(),
        }
    }

    #[test]
    fn a_job_reports_progress_then_its_end() {
        let jobs = Jobs::default();
        let job = jobs.add(plan(1));
        assert!(job.running());
        job.progress(Summary { read: 5, replayed: 4, ..Summary::default() });
        assert_eq!(jobs.get(job.id).map(|j| j.state().summary.replayed), Some(4));
        job.end(Err("broker gone".into()));
        let state = job.state();
        assert_eq!((state.summary.read, state.ended), (5, Some(Err("broker gone".to_owned()))));
        assert!(!job.running() && state.took.is_some());
    }

    #[test]
    fn finished_jobs_make_room_running_ones_stay() {
        let jobs = Jobs::default();
        let running = jobs.add(plan(0));
        for n in 1..=KEPT as u32 + 5 {
            jobs.add(plan(n)).end(Ok(Summary::default()));
        }
        let kept = jobs.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert!(jobs.get(running.id).is_some(), "a running job is never forgotten");
        assert_eq!(kept[0].plan.rate, KEPT as u32 + 5);
    }
}
