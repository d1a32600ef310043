//! Members stopped with SIGTERM hand their partitions over: the process exits only after
//! its consumer closed (last commit, LeaveGroup), within the close bound. A member stopped
//! while its group rebalances, and a rolling restart of three members under a steady flow
//! of requests: the hand-over times are printed, nothing is lost.
//!
//! The mock cluster (two brokers: the second coordinates the group, 200 ms away, the first
//! leads every partition) ends a rebalance round only by a timer, the session timeout less
//! a second (`rdkafka_mock_cgrp.c`), where a real broker ends it once every member has
//! rejoined; and while a member's JoinGroup waits for the round it reads nothing more from
//! that member's coordinator connection. So a hand-over here takes about one such round;
//! the members' session timeouts are set per test to keep the rounds short.

use std::time::{Duration, Instant};

use courier_tests::{
    kafka::{FlowState, MockKafkaProcess, RequestFlow},
    process::Process,
};

const PARTITIONS: i32 = 6;
const PATIENCE: Duration = Duration::from_secs(45);
/// The group coordinator's round trip. Closing the consumer takes two (the last commit,
/// then LeaveGroup); a process that exits without waiting for them leaves its group only
/// by the session timeout. On the local mock without it, such an exit sometimes won that
/// race by luck.
const COORDINATOR_RTT_MS: u32 = 200;
/// A request to every partition this often.
const EVERY: Duration = Duration::from_millis(50);
/// What a stop may take: the grace (1 s here), the close bound, and slack for signal
/// delivery and exit on a loaded machine.
const STOP_BOUND: Duration = Duration::from_secs(1 + 3 + 1);

struct Group {
    cluster: MockKafkaProcess,
    queue: String,
    replies: String,
    group: String,
}

impl Group {
    fn new(test: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let (queue, replies, group) =
            (format!("{test}-{id}.requests"), format!("{test}-{id}.replies"), format!("{test}-{id}"));
        let topics = [
            queue.clone(),
            replies.clone(),
            format!("{queue}.dlq"),
            format!("{queue}.parking"),
            format!("{queue}.retry.1s"),
        ];
        let specs: Vec<(&str, i32, i32)> = topics.iter().map(|t| (t.as_str(), PARTITIONS, 2)).collect();
        let mut cluster = MockKafkaProcess::start_cluster(2, &specs);
        for topic in &topics {
            for partition in 0..PARTITIONS {
                cluster.command(&format!("leader {topic} {partition} 1"));
            }
        }
        cluster.command(&format!("coordinator {group} 2"));
        cluster.command(&format!("rtt 2 {COORDINATOR_RTT_MS}"));
        Self { cluster, queue, replies, group }
    }

    /// A member with this session timeout, started (not yet in the group); its `/readyz`
    /// on the port returned.
    fn member(&self, label: &str, session_timeout: Duration) -> (Process, u16) {
        let broker = format!("kafka://{}", self.cluster.bootstrap);
        let partitions = PARTITIONS.to_string();
        let port = courier_tests::http::free_port();
        let addr = format!("127.0.0.1:{port}");
        let session = format!("session.timeout.ms={}", session_timeout.as_millis());
        let args = [
            "--broker",
            &broker,
            "--queue",
            &self.queue,
            "--replies",
            &self.replies,
            "--group",
            &self.group,
            "--instance",
            label,
            "--retry-delays",
            "1s",
            "--partitions",
            &partitions,
            "--shutdown-grace",
            "1s",
            "--http-addr",
            &addr,
            "--kafka-property",
            "fetch.wait.max.ms=10",
            "--kafka-property",
            &session,
        ];
        (Process::start("greeter", label, &args, &[]), port)
    }

    fn flow(&self) -> RequestFlow {
        RequestFlow::start(&self.cluster.bootstrap, &self.queue, &self.replies, PARTITIONS, EVERY)
    }
}

/// SIGTERM without waiting for the exit: the flow of replies is watched meanwhile.
fn sigterm(process: &Process) -> Instant {
    let at = Instant::now();
    let sent = std::process::Command::new("kill").args(["-TERM", &process.pid().to_string()]).status();
    assert!(sent.is_ok_and(|s| s.success()), "SIGTERM sent");
    at
}

/// Wait for the member stopped at `stopped` to exit: within [`STOP_BOUND`], cleanly,
/// having left its group before; returns when it exited.
async fn stopped_cleanly(process: &mut Process, stopped: Instant) -> Duration {
    while process.running() && stopped.elapsed() < STOP_BOUND + Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = stopped.elapsed();
    assert!(!process.running(), "still running {took:?} after SIGTERM:\n{}", process.tail());
    assert!(took <= STOP_BOUND, "exited {took:?} after SIGTERM, bound {STOP_BOUND:?}:\n{}", process.tail());
    let log = std::fs::read_to_string(&process.log).unwrap_or_default();
    let left = log.find("Left the consumer group.");
    let stopped = log.find("Worker stopped.");
    assert!(
        left.is_some() && left < stopped,
        "the member must leave its group before it exits (it left: {}):\n{}",
        left.is_some(),
        process.tail()
    );
    took
}

/// Wait until `/readyz` on `port` answers 200.
async fn ready(port: u16, process: &mut Process) {
    let deadline = Instant::now() + PATIENCE;
    while courier_tests::http::get(port, "/readyz").await.0 != 200 {
        assert!(process.running() && Instant::now() < deadline, "never ready:\n{}", process.tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `label` has answered a request (so it holds partitions).
async fn answering(flow: &RequestFlow, label: &str, process: &Process) {
    let deadline = Instant::now() + PATIENCE;
    while !flow.with(|s| s.by_instance().contains_key(label)) {
        assert!(Instant::now() < deadline, "{label} never answered:\n{}", process.tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_none_lost(what: &str, seen: &FlowState, tails: &[&Process]) {
    let unanswered = seen.unanswered();
    println!(
        "{what}: {} requests, {} answered, {} lost, {} duplicates; by instance {:?}",
        seen.sent.len(),
        seen.answered.len(),
        unanswered.len(),
        seen.duplicates,
        seen.by_instance()
    );
    let tails: Vec<String> = tails.iter().map(|p| p.tail()).collect();
    assert!(unanswered.is_empty(), "lost e.g. {:?}\n{}", &unanswered[..unanswered.len().min(5)], tails.join("\n\n"));
}

/// Test (a)'s session timeout: the mock's round takes 3 s, which a member stopped 2 s
/// into it can wait out within its close bound (2.5 s). With the default 30 s the mock's
/// rounds take 29 s: the stop is cut short and the hand-over waits for two rounds (over
/// 45 s), leave or not.
const SESSION_DURING_ROUND: Duration = Duration::from_secs(4);
/// The rest of the round in progress (1 s), the round the leave starts (3 s), with room for
/// a loaded machine.
const HAND_OVER_DURING_ROUND: Duration = Duration::from_secs(10);

/// Member A holds every partition; member B joins; 2 s later, while the group is still
/// rebalancing for B, A gets SIGTERM. A waits for the round to end, leaves the group and
/// only then exits (within the grace and the close bound); B then holds every partition
/// and answers within [`HAND_OVER_DURING_ROUND`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_while_its_group_rebalances_leaves_it_and_hands_over() {
    let group = Group::new("rebalance-stop");
    let (mut a, _) = group.member("rebalance-stop-a", SESSION_DURING_ROUND);
    a.wait_for_log("Partitions assigned.", PATIENCE);
    let flow = group.flow();
    answering(&flow, "rebalance-stop-a", &a).await;
    let (mut b, _) = group.member("rebalance-stop-b", SESSION_DURING_ROUND);
    b.wait_for_log("Consuming.", PATIENCE);
    // B's JoinGroup goes out at once; A learns of the round at its next heartbeat (1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped = sigterm(&a);
    let exited = stopped_cleanly(&mut a, stopped).await;
    let handed_over = flow.wait_flowing_again(stopped, PARTITIONS, PATIENCE).await;
    let gap = flow.with(|s| s.longest_gap(stopped, Instant::now()));
    println!(
        "kafka stop during a rebalance: A exited {exited:.1?} after SIGTERM; every partition answered again \
         {handed_over:.1?} after it; longest reply gap {gap:.1?}"
    );
    let handed_over = handed_over.unwrap_or_else(|| panic!("B never answered every partition:\n{}", b.tail()));
    assert!(handed_over < HAND_OVER_DURING_ROUND, "hand-over {handed_over:?}:\n{}", b.tail());
    let seen = flow.finish(Duration::from_secs(10)).await;
    assert_none_lost("kafka stop during a rebalance", &seen, &[&a, &b]);
    assert!(b.terminate(), "SIGTERM ends B cleanly:\n{}", b.tail());
}

/// The rolling restart's session timeout (the mock's rounds take 9 s).
const SESSION_ROLLING: Duration = Duration::from_secs(10);
/// A step's hand-over: the round the old member's LeaveGroup starts (9 s here), with room
/// for a loaded machine. A member that exits without leaving adds its session timeout:
/// about 20 s.
const HAND_OVER_ROLLING: Duration = Duration::from_secs(15);

/// A rolling restart as a Deployment does it (`maxSurge: 1`, `maxUnavailable: 0`) under a
/// steady flow of requests: three members; for each, a replacement starts, and once it
/// is ready and answering, the old member gets SIGTERM. Per step: how long until every
/// partition answered again after the SIGTERM (within [`HAND_OVER_ROLLING`]), and the
/// longest any partition went without a reply during the step, the replacement's join
/// included. Each old member leaves its group before it exits; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_members_hands_over_in_seconds_and_loses_nothing() {
    let group = Group::new("rolling");
    let mut old = Vec::new();
    for n in 1..=3 {
        let label = format!("rolling-old-{n}");
        let (mut member, port) = group.member(&label, SESSION_ROLLING);
        ready(port, &mut member).await;
        old.push((label, member));
    }
    let flow = group.flow();
    for (label, member) in &old {
        answering(&flow, label, member).await;
    }
    let mut new = Vec::new();
    let mut steps = Vec::new();
    for (n, (_, mut member)) in old.into_iter().enumerate() {
        let step = Instant::now();
        let label = format!("rolling-new-{}", n + 1);
        let (mut replacement, port) = group.member(&label, SESSION_ROLLING);
        ready(port, &mut replacement).await;
        answering(&flow, &label, &replacement).await;
        let stopped = sigterm(&member);
        let exited = stopped_cleanly(&mut member, stopped).await;
        let handed_over = flow.wait_flowing_again(stopped, PARTITIONS, PATIENCE).await;
        let gap = flow.with(|s| s.longest_gap(step, Instant::now()));
        println!(
            "kafka rolling restart, step {}: replacement answering {:.1?} after it started; old member exited \
             {exited:.1?} after SIGTERM; every partition answered again {handed_over:.1?} after it; longest reply \
             gap in the step {gap:.1?}",
            n + 1,
            stopped - step
        );
        let handed_over =
            handed_over.unwrap_or_else(|| panic!("step {}: never answered again:\n{}", n + 1, replacement.tail()));
        assert!(handed_over < HAND_OVER_ROLLING, "step {}: hand-over {handed_over:?}", n + 1);
        steps.push(handed_over);
        new.push(replacement);
    }
    let seen = flow.finish(Duration::from_secs(10)).await;
    let tails: Vec<&Process> = new.iter().collect();
    assert_none_lost("kafka rolling restart", &seen, &tails);
    println!("kafka rolling restart: hand-overs {steps:.1?}");
    for mut member in new {
        assert!(member.terminate(), "SIGTERM ends the member cleanly:\n{}", member.tail());
    }
}
