//! One circuit breaker: the outcomes of handler calls and the clock in, its phase out.
//!
//! ```text
//! closed ── `failures` transient failures in a row, or a share of `ratio` among the
//!           last `window` calls ──▶ open
//! open ──── cooldown over ──▶ half-open        (cooldown: `cooldown`, doubled each time
//! half-open ─ `probes` calls passed ──▶ closed   a probe fails, up to `max_cooldown`)
//! half-open ─ a call failed ──▶ open
//! ```
//!
//! Only transient failures count against a dependency; the caller records nothing for
//! permanent failures and refused inputs, which say nothing about it.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

/// When a breaker opens and how it recovers. Validated by [`Policy::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Transient failures in a row that open it (0: this rule is off).
    failures: u32,
    /// Share of transient failures among the last `window` calls that opens it.
    ratio: f64,
    /// Calls the share is taken over, once that many were seen (0: this rule is off).
    window: u32,
    /// The first open period.
    cooldown: Duration,
    /// The longest open period.
    max_cooldown: Duration,
    /// Calls that must pass while half-open to close it; also how many may run at once.
    probes: u32,
}

/// A breaker policy that cannot work; the message says what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPolicy {
    /// Neither rule could ever open it.
    #[error("both rules are off (failures 0 and window 0): use --breaker off instead")]
    NeverOpens,
    /// The ratio must be a share.
    #[error("ratio must be in (0, 1], got {0}")]
    Ratio(String),
    /// The cooldowns must be positive and ordered.
    #[error("cooldown {cooldown:?} must be > 0 and <= max cooldown {max:?}")]
    Cooldown {
        /// The first open period given.
        cooldown: Duration,
        /// The longest open period given.
        max: Duration,
    },
    /// At least one probe is needed to close it again.
    #[error("probes must be at least 1")]
    NoProbes,
}

impl Policy {
    /// A validated policy.
    pub fn new(
        failures: u32,
        ratio: f64,
        window: u32,
        cooldown: Duration,
        max_cooldown: Duration,
        probes: u32,
    ) -> Result<Self, InvalidPolicy> {
        if failures == 0 && window == 0 {
            return Err(InvalidPolicy::NeverOpens);
        }
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(InvalidPolicy::Ratio(ratio.to_string()));
        }
        if cooldown.is_zero() || cooldown > max_cooldown {
            return Err(InvalidPolicy::Cooldown { cooldown, max: max_cooldown });
        }
        if probes == 0 {
            return Err(InvalidPolicy::NoProbes);
        }
        Ok(Self { failures, ratio, window, cooldown, max_cooldown, probes })
    }

    /// Calls allowed at once while half-open.
    pub fn probes(&self) -> u32 {
        self.probes
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Phase {
    /// Calls go through.
    Closed,
    /// The dependency is down: no calls until the cooldown is over.
    Open,
    /// A few probe calls decide whether it closes again.
    HalfOpen,
}

impl Phase {
    /// The name in logs and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the `courier_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub(crate) fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

/// The outcome of one handler call, as a breaker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    /// The call passed.
    Passed,
    /// It failed transiently.
    Failed,
}

/// One dependency's breaker.
#[derive(Clone, Debug)]
pub(super) struct Breaker {
    /// Its rules.
    policy: Policy,
    /// Where it stands.
    phase: Phase,
    /// Transient failures in a row while closed.
    in_a_row: u32,
    /// The last `window` calls while closed (`true`: failed).
    recent: VecDeque<bool>,
    /// Failures in `recent`.
    recent_failures: u32,
    /// The current open period (doubles on each failed probe).
    cooldown: Duration,
    /// When the open period ends.
    until: Instant,
    /// Probe calls passed while half-open.
    passed: u32,
}

impl Breaker {
    /// A closed breaker.
    pub(super) fn new(policy: Policy, now: Instant) -> Self {
        let cooldown = policy.cooldown;
        Self {
            policy,
            phase: Phase::Closed,
            in_a_row: 0,
            recent: VecDeque::new(),
            recent_failures: 0,
            cooldown,
            until: now,
            passed: 0,
        }
    }

    /// Where it stands.
    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    /// When an open breaker turns half-open.
    pub(super) fn until(&self) -> Option<Instant> {
        (self.phase == Phase::Open).then_some(self.until)
    }

    /// The clock moved: an open breaker whose cooldown is over turns half-open. Returns
    /// the new phase when it changed.
    pub(super) fn tick(&mut self, now: Instant) -> Option<Phase> {
        if self.phase == Phase::Open && now >= self.until {
            self.phase = Phase::HalfOpen;
            self.passed = 0;
            return Some(Phase::HalfOpen);
        }
        None
    }

    /// A call ended. Returns the new phase when it changed. Calls that end while open
    /// (started before it opened) change nothing.
    pub(super) fn record(&mut self, call: Call, now: Instant) -> Option<Phase> {
        self.tick(now);
        match (self.phase, call) {
            (Phase::Open, _) => None,
            (Phase::HalfOpen, Call::Failed) => {
                self.cooldown = (self.cooldown * 2).min(self.policy.max_cooldown);
                Some(self.open(now))
            }
            (Phase::HalfOpen, Call::Passed) => {
                self.passed += 1;
                (self.passed >= self.policy.probes).then(|| self.close())
            }
            (Phase::Closed, call) => {
                let failed = call == Call::Failed;
                self.in_a_row = if failed { self.in_a_row + 1 } else { 0 };
                if self.policy.window > 0 {
                    self.recent.push_back(failed);
                    self.recent_failures += u32::from(failed);
                    if self.recent.len() > self.policy.window as usize {
                        self.recent_failures -= u32::from(self.recent.pop_front() == Some(true));
                    }
                }
                self.trips().then(|| self.open(now))
            }
        }
    }

    /// Whether the closed breaker's counts call for opening.
    fn trips(&self) -> bool {
        let in_a_row = self.policy.failures > 0 && self.in_a_row >= self.policy.failures;
        let window = self.policy.window as usize;
        let share = window > 0
            && self.recent.len() == window
            && f64::from(self.recent_failures) >= self.policy.ratio * window as f64;
        in_a_row || share
    }

    fn open(&mut self, now: Instant) -> Phase {
        self.phase = Phase::Open;
        self.until = now + self.cooldown;
        Phase::Open
    }

    /// Closed again: the counts start afresh, and so does the cooldown.
    fn close(&mut self) -> Phase {
        self.phase = Phase::Closed;
        self.in_a_row = 0;
        self.recent.clear();
        self.recent_failures = 0;
        self.cooldown = self.policy.cooldown;
        Phase::Closed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn policy(failures: u32, ratio: f64, window: u32) -> Policy {
        Policy::new(failures, ratio, window, 5 * S, 60 * S, 1).expect("valid")
    }

    #[test]
    fn policies_that_cannot_work_are_refused() {
        assert_eq!(Policy::new(0, 0.5, 0, S, S, 1), Err(InvalidPolicy::NeverOpens));
        assert!(matches!(Policy::new(5, 0.0, 10, S, S, 1), Err(InvalidPolicy::Ratio(_))));
        assert!(matches!(Policy::new(5, 1.5, 10, S, S, 1), Err(InvalidPolicy::Ratio(_))));
        assert!(matches!(Policy::new(5, f64::NAN, 10, S, S, 1), Err(InvalidPolicy::Ratio(_))));
        assert!(matches!(Policy::new(5, 0.5, 10, 2 * S, S, 1), Err(InvalidPolicy::Cooldown { .. })));
        assert!(matches!(Policy::new(5, 0.5, 10, Duration::ZERO, S, 1), Err(InvalidPolicy::Cooldown { .. })));
        assert_eq!(Policy::new(5, 0.5, 10, S, S, 0), Err(InvalidPolicy::NoProbes));
    }

    #[test]
    fn opens_after_failures_in_a_row_and_a_pass_resets_the_run() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(3, 1.0, 0), now);
        for call in [Call::Failed, Call::Failed, Call::Passed, Call::Failed, Call::Failed] {
            assert_eq!(breaker.record(call, now), None);
        }
        assert_eq!(breaker.record(Call::Failed, now), Some(Phase::Open));
        assert_eq!(breaker.until(), Some(now + 5 * S));
    }

    #[test]
    fn opens_on_the_share_of_failures_once_the_window_is_full() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(0, 0.5, 4), now);
        assert_eq!(breaker.record(Call::Failed, now), None);
        assert_eq!(breaker.record(Call::Failed, now), None);
        assert_eq!(breaker.record(Call::Passed, now), None);
        assert_eq!(breaker.record(Call::Passed, now), Some(Phase::Open), "2 of the last 4 failed");
    }

    #[test]
    fn the_window_slides() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(0, 0.5, 4), now);
        for call in [Call::Failed, Call::Passed, Call::Passed, Call::Passed, Call::Failed, Call::Passed] {
            assert_eq!(breaker.record(call, now), None);
        }
        // The last four: passed, passed, failed, passed; one more failure makes two.
        assert_eq!(breaker.record(Call::Failed, now), Some(Phase::Open));
    }

    #[test]
    fn half_open_after_the_cooldown_then_a_passed_probe_closes_it() {
        let start = Instant::now();
        let mut breaker = Breaker::new(policy(1, 1.0, 0), start);
        assert_eq!(breaker.record(Call::Failed, start), Some(Phase::Open));
        assert_eq!(breaker.tick(start + 4 * S), None);
        assert_eq!(breaker.tick(start + 5 * S), Some(Phase::HalfOpen));
        assert_eq!(breaker.until(), None);
        assert_eq!(breaker.record(Call::Passed, start + 6 * S), Some(Phase::Closed));
    }

    #[test]
    fn a_failed_probe_reopens_it_for_twice_as_long_up_to_the_limit() {
        let mut now = Instant::now();
        let mut breaker = Breaker::new(policy(1, 1.0, 0), now);
        breaker.record(Call::Failed, now);
        let mut periods = Vec::new();
        for _ in 0..6 {
            let until = breaker.until().expect("open");
            periods.push((until - now).as_secs());
            now = until;
            assert_eq!(breaker.tick(now), Some(Phase::HalfOpen));
            assert_eq!(breaker.record(Call::Failed, now), Some(Phase::Open));
        }
        assert_eq!(periods, [5, 10, 20, 40, 60, 60]);
        // Closing starts the cooldown afresh.
        now = breaker.until().expect("open");
        breaker.tick(now);
        breaker.record(Call::Passed, now);
        breaker.record(Call::Failed, now);
        assert_eq!(breaker.until(), Some(now + 5 * S));
    }

    #[test]
    fn it_closes_after_as_many_passed_probes_as_the_policy_says() {
        let now = Instant::now();
        let mut breaker = Breaker::new(Policy::new(1, 1.0, 0, S, S, 3).expect("valid"), now);
        breaker.record(Call::Failed, now);
        breaker.tick(now + S);
        assert_eq!(breaker.record(Call::Passed, now + S), None);
        assert_eq!(breaker.record(Call::Passed, now + S), None);
        assert_eq!(breaker.record(Call::Passed, now + S), Some(Phase::Closed));
    }

    #[test]
    fn calls_ending_while_open_change_nothing() {
        let now = Instant::now();
        let mut breaker = Breaker::new(policy(1, 1.0, 0), now);
        breaker.record(Call::Failed, now);
        assert_eq!(breaker.record(Call::Passed, now + S), None);
        assert_eq!(breaker.record(Call::Failed, now + S), None);
        assert_eq!(breaker.until(), Some(now + 5 * S), "the open period is not extended");
    }

    /// The reference: the same rules, recounted from the whole history each time.
    fn model_opens(policy: &Policy, closed_calls: &[bool]) -> bool {
        let in_a_row = closed_calls.iter().rev().take_while(|failed| **failed).count();
        let window = policy.window as usize;
        let share = window > 0 && closed_calls.len() >= window && {
            let failed = closed_calls[closed_calls.len() - window..].iter().filter(|f| **f).count();
            failed as f64 >= policy.ratio * window as f64
        };
        (policy.failures > 0 && in_a_row >= policy.failures as usize) || share
    }

    proptest! {
        /// While closed, the breaker opens exactly when the reference, recounting the
        /// calls since it last closed, says so.
        #[test]
        fn opens_exactly_when_the_reference_does(
            failures in 0u32..6,
            ratio in 0.05f64..=1.0,
            window in 0u32..12,
            calls in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            prop_assume!(failures > 0 || window > 0);
            let policy = Policy::new(failures, ratio, window, S, 4 * S, 1).expect("valid");
            let mut now = Instant::now();
            let mut breaker = Breaker::new(policy.clone(), now);
            let mut since_closed = Vec::new();
            for failed in calls {
                let call = if failed { Call::Failed } else { Call::Passed };
                let was = breaker.phase();
                let changed = breaker.record(call, now);
                if was == Phase::Closed {
                    since_closed.push(failed);
                    let opens = model_opens(&policy, &since_closed);
                    prop_assert_eq!(changed == Some(Phase::Open), opens);
                }
                if breaker.phase() == Phase::Open {
                    // Let the cooldown pass; the next call is a probe.
                    now = breaker.until().expect("open");
                    prop_assert_eq!(breaker.tick(now), Some(Phase::HalfOpen));
                }
                if breaker.phase() == Phase::Closed && was != Phase::Closed {
                    since_closed.clear();
                }
            }
        }

        /// Calls that pass never open it, whatever else happens.
        #[test]
        fn passing_calls_never_open_it(calls in 0usize..500, failures in 1u32..6, window in 0u32..12) {
            let now = Instant::now();
            let mut breaker = Breaker::new(Policy::new(failures, 0.05, window, S, S, 1).expect("valid"), now);
            for _ in 0..calls {
                prop_assert_eq!(breaker.record(Call::Passed, now), None);
            }
        }
    }
}
