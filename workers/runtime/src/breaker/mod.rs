//! The circuit breaker: when a dependency is down, the worker stops taking deliveries,
//! and the backlog waits in the broker instead of spending its retries and filling the
//! dead-letter queue.
//!
//! One breaker per dependency ([`state`]), fed by handler calls: a transient failure
//! counts against the dependency the handler named ([`crate::HandlerError::dependency`],
//! [`DEFAULT_DEPENDENCY`] when it named none); a call that passes counts for every
//! dependency; permanent failures and refused inputs count for none. The worker follows
//! the [`Gate`]'s [`Say`]:
//!
//! - **closed**: deliveries as usual;
//! - **open** (any breaker): no new deliveries ([`crate::transport::Intake::Stopped`]);
//!   deliveries in hand go back to the broker unprocessed, and those whose handler call
//!   fails go back too, without spending a retry round;
//! - **half-open** (none open): `--breaker-probes` deliveries at a time; when as many
//!   pass, the breaker closes, and a failure opens it again for twice the cooldown.

mod state;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

pub(crate) use state::{Call, Phase};
pub use state::{InvalidPolicy, Policy};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

use crate::observe::Metrics;

/// The dependency a transient failure counts against when the handler names none
/// (handler timeouts included).
pub(crate) const DEFAULT_DEPENDENCY: &str = "handler";

/// What the worker may take from the broker, from every breaker together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Say {
    /// Every breaker is closed.
    Closed,
    /// At least one is open; the last of them turns half-open at `until`.
    Open {
        /// When to look again.
        until: Instant,
    },
    /// None is open, some are half-open: this many deliveries at a time.
    HalfOpen {
        /// Deliveries at once.
        probes: u32,
    },
}

/// The worker's breakers; clones share them.
#[derive(Clone, Debug)]
pub(crate) struct Gate {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// `None`: the breaker is off (`--breaker off`).
    policy: Option<Policy>,
    /// One breaker per dependency seen, the default one first.
    breakers: Mutex<Vec<(Arc<str>, state::Breaker)>>,
    /// Whether any breaker is open: read before every handler call without the lock.
    open: AtomicBool,
    /// The worker's view, changed only on transitions.
    say: watch::Sender<Say>,
    /// `courier_breaker_state` and the transition counter.
    metrics: Metrics,
}

impl Gate {
    /// Breakers following `policy`, or none when it is `None`.
    pub(crate) fn new(policy: Option<Policy>, metrics: Metrics) -> Self {
        let breakers = match &policy {
            Some(policy) => {
                metrics.breaker(DEFAULT_DEPENDENCY, Phase::Closed.gauge(), None);
                vec![(Arc::from(DEFAULT_DEPENDENCY), state::Breaker::new(policy.clone(), Instant::now()))]
            }
            None => Vec::new(),
        };
        let (say, _) = watch::channel(Say::Closed);
        Self {
            shared: Arc::new(Shared {
                policy,
                breakers: Mutex::new(breakers),
                open: AtomicBool::new(false),
                say,
                metrics,
            }),
        }
    }

    /// Whether a breaker is open: deliveries go back to the broker instead of being handled.
    pub(crate) fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// What the worker may take now.
    #[cfg(test)]
    pub(crate) fn say(&self) -> Say {
        *self.shared.say.borrow()
    }

    /// Tells of every change of [`Gate::say`].
    pub(crate) fn watch(&self) -> watch::Receiver<Say> {
        self.shared.say.subscribe()
    }

    /// A handler call ended: `Failed` counts against `dependency` (or the default one),
    /// `Passed` for every dependency.
    pub(crate) fn record(&self, call: Call, dependency: Option<&str>) {
        let Some(policy) = &self.shared.policy else { return };
        let now = Instant::now();
        let mut breakers = self.shared.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        match call {
            Call::Passed => {
                for (name, breaker) in breakers.iter_mut() {
                    changed |= self.transition(name, breaker.record(call, now), breaker);
                }
            }
            Call::Failed => {
                let name = dependency.unwrap_or(DEFAULT_DEPENDENCY);
                let at = match breakers.iter().position(|(n, _)| &**n == name) {
                    Some(at) => at,
                    None => {
                        breakers.push((Arc::from(name), state::Breaker::new(policy.clone(), now)));
                        breakers.len() - 1
                    }
                };
                let (name, breaker) = &mut breakers[at];
                changed = self.transition(name, breaker.record(call, now), breaker);
            }
        }
        if changed {
            self.publish(&breakers);
        }
    }

    /// Open breakers whose cooldown is over turn half-open.
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let mut breakers = self.shared.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (name, breaker) in breakers.iter_mut() {
            changed |= self.transition(name, breaker.tick(now), breaker);
        }
        if changed {
            self.publish(&breakers);
        }
    }

    /// Log and count a transition; returns whether there was one.
    fn transition(&self, dependency: &str, to: Option<Phase>, breaker: &state::Breaker) -> bool {
        let Some(to) = to else { return false };
        self.shared.metrics.breaker(dependency, to.gauge(), Some(to.as_str()));
        match to {
            Phase::Open => {
                let cooldown = breaker.until().map(|until| until - Instant::now());
                warn!(dependency, ?cooldown, "Circuit breaker open: no new deliveries until the cooldown is over.");
            }
            Phase::HalfOpen => info!(dependency, "Circuit breaker half-open: probing with a few deliveries."),
            Phase::Closed => info!(dependency, "Circuit breaker closed: taking deliveries again."),
        }
        true
    }

    /// Recompute what the worker may take, from every breaker.
    fn publish(&self, breakers: &[(Arc<str>, state::Breaker)]) {
        let open_until = breakers.iter().filter_map(|(_, b)| b.until()).max();
        let half_open = breakers.iter().any(|(_, b)| b.phase() == Phase::HalfOpen);
        let say = match (open_until, half_open, &self.shared.policy) {
            (Some(until), _, _) => Say::Open { until },
            (None, true, Some(policy)) => Say::HalfOpen { probes: policy.probes() },
            _ => Say::Closed,
        };
        self.shared.open.store(matches!(say, Say::Open { .. }), Ordering::Relaxed);
        self.shared.say.send_replace(say);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gate() -> (Gate, Metrics) {
        let metrics = Metrics::new("w");
        let policy = Policy::new(2, 1.0, 0, Duration::from_secs(5), Duration::from_secs(60), 1).expect("valid");
        (Gate::new(Some(policy), metrics.clone()), metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn any_open_dependency_stops_the_worker_until_the_last_cooldown_is_over() {
        let (gate, metrics) = gate();
        let mut watch = gate.watch();
        gate.record(Call::Failed, Some("db"));
        gate.record(Call::Failed, Some("db"));
        assert!(watch.has_changed().expect("open"));
        let Say::Open { until } = *watch.borrow_and_update() else { panic!("db is open") };
        assert!(gate.is_open());
        tokio::time::advance(Duration::from_secs(2)).await;
        gate.record(Call::Failed, None);
        gate.record(Call::Failed, None);
        let Say::Open { until: later } = gate.say() else { panic!("both are open") };
        assert_eq!(later - until, Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(4)).await;
        gate.tick();
        assert!(gate.is_open(), "db is half-open, the default dependency still open");
        tokio::time::advance(Duration::from_secs(1)).await;
        gate.tick();
        assert_eq!(gate.say(), Say::HalfOpen { probes: 1 });
        gate.record(Call::Passed, None);
        assert_eq!(gate.say(), Say::Closed, "a call that passes closes every half-open breaker");
        let text = metrics.render();
        assert!(text.contains(r#"courier_breaker_state{dependency="db",worker="w"} 0"#), "{text}");
        assert!(text.contains(r#"courier_breaker_transitions_total{dependency="db",to="open",worker="w"} 1"#));
        assert!(text.contains(r#"courier_breaker_transitions_total{dependency="handler",to="closed",worker="w"} 1"#));
    }

    #[tokio::test(start_paused = true)]
    async fn a_breaker_that_is_off_never_opens() {
        let gate = Gate::new(None, Metrics::new("w"));
        for _ in 0..100 {
            gate.record(Call::Failed, None);
        }
        assert!(!gate.is_open());
        assert_eq!(gate.say(), Say::Closed);
        assert!(!gate.watch().has_changed().expect("the gate lives"));
    }
}
