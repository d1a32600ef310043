//! The dead-letter console's drills, written once and run on each broker: the greeter and
//! `courier console` as real processes, a real headless browser ([`crate::browser`]), and
//! a raw client to publish and read queues.

use std::time::Instant;

use courier::{
    Message,
    contract::{failure::FailureKind, headers as h},
};

use crate::{
    browser::Browser,
    dlq::{self, Drill, PATIENCE},
    http,
    process::Process,
};

/// The token of the drills' consoles.
pub const TOKEN: &str = "drill-token-0123456789";

/// `courier console` for the drill's greeter (`token`: able to act); returns it and its port.
pub fn console(drill: &impl Drill, label: &str, token: Option<&str>) -> (Process, u16) {
    let port = http::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<String> = ["console", "--worker", "greeter", "--listen", &listen].map(String::from).to_vec();
    args.extend(drill.flags());
    if let Some(token) = token {
        args.extend(["--token".to_owned(), token.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut process = Process::start("courier", label, &args, &[]);
    process.wait_for_log("Console serving.", PATIENCE);
    (process, port)
}

/// A message id that tries to be markup, and to leave the attribute it is written into.
const HOSTILE_ID: &str = r#"<b>id</b>" autofocus onfocus="window.__owned=5"#;

/// A dead-letter record whose every shown field tries to be markup.
pub fn hostile(drill: &impl Drill) -> Message {
    let mut record = dlq::dead_letter("hostile", drill.queue(), drill.replies(), FailureKind::Permanent);
    record.payload = r#"{"message":"<script>window.__owned=1</script>"}"#.into();
    record.headers.insert("x-note".into(), "<script>window.__owned=2</script>".into());
    record.headers.insert(h::name(h::FAILURE_MESSAGE), r#"<img src=x onerror="window.__owned=3">"#.into());
    record.headers.insert(h::name(h::MESSAGE_ID), HOSTILE_ID.into());
    record
}

/// The records page of a group.
fn group_url(port: u16, fingerprint: &str) -> String {
    format!("http://127.0.0.1:{port}/queues/greeter/dlq?fingerprint={fingerprint}")
}

/// A worker's dependency fails and its requests end in the dead-letter queue, beside a
/// hostile record; in the browser an operator sees both groups, the hostile one as text,
/// signs in, previews the replay of the failed group (which changes nothing), runs it and
/// watches it finish; every original requester gets its reply.
pub async fn browse_preview_and_replay(drill: &mut impl Drill) {
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    let mut broken = dlq::greeter(drill, "console-broken", true, &[]);
    let ids: Vec<String> = (0..12).map(|i| format!("console-{i}")).collect();
    drill.publish(&queue, ids.iter().map(|id| dlq::request(id, &replies)).collect()).await;
    dlq::wait_for_dead_letters(drill, 12, false);
    broken.terminate();
    drill.publish(&format!("{queue}.dlq"), vec![hostile(drill)]).await;
    dlq::wait_for_dead_letters(drill, 13, false);

    let (mut console, port) = console(drill, "console-browse", Some(TOKEN));
    let browser = Browser::start().await;
    let home = format!("http://127.0.0.1:{port}/");
    browser.open(&home).await;
    assert_eq!(browser.text("#queue-greeter-dlq .total").await.as_deref(), Some("13"), "{}", browser.page_text().await);
    assert_eq!(browser.count("#queue-greeter-dlq tr.group").await, 2);
    assert!(browser.page_text().await.contains("Sign in to act"));

    // Everything the hostile record carries is text on the page; nothing of it runs or loads.
    let hostile_group = courier::contract::failure::fingerprint(FailureKind::Permanent, "greeter", "drill");
    for url in [home.clone(), group_url(port, &hostile_group)] {
        browser.open(&url).await;
        let text = browser.script("return document.body.textContent").await;
        let text = text.as_str().unwrap_or_default();
        assert!(text.contains(r#"<img src=x onerror="window.__owned=3">"#), "{text}");
        if url != home {
            assert!(text.contains("<script>window.__owned=1</script>"), "{text}");
            assert!(text.contains("<script>window.__owned=2</script>"), "{text}");
            assert!(text.contains(HOSTILE_ID), "{text}");
        }
        let markup = browser.script("return document.querySelectorAll('script, img, b').length").await;
        assert_eq!(markup, 0, "a record's text became markup on {url}");
        assert_eq!(browser.script("return typeof window.__owned").await, "undefined");
    }
    assert_eq!(browser.count("#group-actions").await, 0, "no actions before signing in");

    browser.open(&format!("{home}sign-in")).await;
    browser.type_into("#operator-name", "drill-operator").await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#sign-in-button").await;
    browser.wait_for_text("#operator", "drill-operator").await;
    if let Ok(path) = std::env::var("COURIER_CONSOLE_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot().await).expect("write the screenshot");
    }

    // Signed in, the record's values are written into the action forms' attributes too:
    // still data (the per-message form carries the id byte for byte), never markup.
    browser.open(&group_url(port, &hostile_group)).await;
    assert!(browser.count("#group-actions").await > 0, "signed in, a group can be acted on");
    assert_eq!(
        browser.script("return document.querySelectorAll('script, img, b, [onfocus], [autofocus]').length").await,
        0
    );
    let carried = browser.script("return document.querySelector('input[name=message_id]').value").await;
    assert_eq!(carried, HOSTILE_ID);
    assert_eq!(browser.script("return typeof window.__owned").await, "undefined");

    let _fixed = dlq::greeter(drill, "console-fixed", false, &[]);
    // The largest group first: the greeter's twelve.
    browser.open(&home).await;
    browser.click("#queue-greeter-dlq a.group-link").await;
    assert_eq!(browser.count("article.record").await, 12);
    browser.click("#preview-replay").await;
    assert_eq!(browser.text("#preview-count").await.as_deref(), Some("12"), "{}", browser.page_text().await);
    let destination = browser.text("#preview-destination").await.unwrap_or_default();
    assert!(destination.starts_with(&queue), "{destination}");
    let planned = browser.text("ul.planned").await.unwrap_or_default();
    assert!(planned.contains(&format!("replay to {queue}")), "{planned}");
    assert_eq!(dlq::dlq_total(drill, false), 13, "a preview changes nothing");

    browser.click("#confirm").await;
    browser.wait_for_text("#job-state", "done").await;
    assert_eq!(browser.text("#job-replayed").await.as_deref(), Some("12"));
    let ok = |m: &Message| m.headers.get(h::STATUS).map(String::as_str) == Some("ok");
    let answered = dlq::collect(drill, &replies, |all| {
        dlq::by_id(&all.iter().filter(|m| ok(m)).cloned().collect::<Vec<_>>()).len() == ids.len()
    })
    .await;
    let answered: Vec<Message> = answered.into_iter().filter(ok).collect();
    assert!(ids.iter().all(|id| dlq::by_id(&answered).contains_key(id)));
    assert_eq!(dlq::dlq_total(drill, false), 1, "the hostile record stays");
    browser.close().await;
    console.terminate();
    let log = std::fs::read_to_string(&console.log).unwrap_or_default();
    assert!(log.contains("Console action started.") && log.contains("drill-operator"), "{log}");
    assert!(log.contains("Console action finished."), "{log}");
}

/// An action runs only with a token, a signed-in session, its form token, and from the
/// console's own pages; refused ones change nothing, and are logged.
pub async fn actions_need_the_token_a_session_and_the_consoles_own_form(drill: &mut impl Drill) {
    let queue = drill.queue().to_owned();
    dlq::declare_topology(drill);
    let records: Vec<Message> = (0..3)
        .map(|i| dlq::dead_letter(&format!("kept-{i}"), &queue, drill.replies(), FailureKind::Transient))
        .collect();
    drill.publish(&format!("{queue}.dlq"), records).await;
    dlq::wait_for_dead_letters(drill, 3, false);
    let form = "application/x-www-form-urlencoded";
    let purge = |token: &str| format!("form_token={token}&action=purge");

    let (mut read_only, port) = console(drill, "console-read-only", None);
    let refused = http::post_as(port, "/queues/greeter/dlq/run", form, purge("x").as_bytes(), &[]).await;
    assert_eq!(refused.status, 403);
    assert!(String::from_utf8_lossy(&refused.body).contains("read-only"));
    let sign_in = format!("token={TOKEN}&operator=me");
    assert_eq!(http::post_as(port, "/sign-in", form, sign_in.as_bytes(), &[]).await.status, 403);
    read_only.terminate();

    let (mut console, port) = console(drill, "console-guarded", Some(TOKEN));
    let home = http::get_as(port, "/", &[]).await;
    let head = home.head.to_lowercase();
    for guard in
        ["content-security-policy: default-src 'none'", "x-frame-options: deny", "x-content-type-options: nosniff"]
    {
        assert!(head.contains(guard), "no {guard:?} in\n{head}");
    }
    // A page elsewhere whose name points at this address (DNS rebinding) reads nothing.
    let rebound = http::get_as(port, "/", &[("Host", &format!("evil.example:{port}"))]).await;
    assert_eq!(rebound.status, 421, "{}", rebound.head);
    let run = "/queues/greeter/dlq/run";
    let refused = http::post_as(port, run, form, purge("x").as_bytes(), &[]).await;
    assert_eq!(refused.status, 403, "no session");
    let wrong = http::post_as(port, "/sign-in", form, b"token=not-the-token-at-all&operator=me", &[]).await;
    assert_eq!(wrong.status, 403);
    let signed = http::post_as(port, "/sign-in", form, sign_in.as_bytes(), &[]).await;
    assert_eq!(signed.status, 303, "{}", signed.head);
    let cookie = signed
        .head
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: ").or_else(|| line.strip_prefix("Set-Cookie: ")))
        .and_then(|value| value.split(';').next())
        .expect("a session cookie")
        .to_owned();
    assert!(signed.head.to_lowercase().contains("httponly; samesite=strict"), "{}", signed.head);
    let page = http::get_as(port, "/queues/greeter/dlq", &[("Cookie", &cookie)]).await;
    let page = String::from_utf8_lossy(&page.body).into_owned();
    let token = page
        .split(r#"name="form_token" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry the form token")
        .to_owned();
    let with_cookie = [("Cookie", cookie.as_str())];
    assert_eq!(http::post_as(port, run, form, purge("forged").as_bytes(), &with_cookie).await.status, 403);
    for (name, value) in [("Origin", "http://evil.example"), ("Sec-Fetch-Site", "cross-site")] {
        let headers = [("Cookie", cookie.as_str()), (name, value)];
        let refused = http::post_as(port, run, form, purge(&token).as_bytes(), &headers).await;
        assert_eq!(refused.status, 403, "{name}: {value}");
    }
    assert_eq!(dlq::dlq_total(drill, false), 3, "refused actions change nothing");

    // The same request with everything in place runs. Once, in a full run under load, a
    // purge right after `courier dlq stats` (above) read none of the three records and
    // ended "done" with 0 purged (RabbitMQ had not yet counted the records the closed
    // reader returned, it seems; not reproduced alone): a second try is what an operator
    // does then, and it must purge them.
    let mut tries = 0;
    while dlq::dlq_total(drill, false) > 0 {
        tries += 1;
        assert!(tries <= 2, "two purges left records in place:\n{}", console.tail());
        let accepted = http::post_as(port, run, form, purge(&token).as_bytes(), &with_cookie).await;
        assert_eq!(accepted.status, 303, "{}", accepted.head);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    console.terminate();
    let log = std::fs::read_to_string(&console.log).unwrap_or_default();
    assert_eq!(log.matches("Console action refused.").count(), 4, "{log}");
    assert!(log.contains("Console sign-in refused."), "{log}");
}

/// A dead-letter record of group `code` whose payload carries `pad` bytes more.
fn bulk(i: usize, code: &str, source: &str, pad: usize) -> Message {
    let now = courier::contract::timestamp::format(std::time::SystemTime::now());
    let fingerprint = courier::contract::failure::fingerprint(FailureKind::Transient, "greeter", code);
    let payload = format!(r#"{{"message":"bulk-{i}","pad":"{}"}}"#, "x".repeat(pad));
    let mut message = Message { payload: payload.into(), ..Message::default() };
    for (name, value) in [
        (h::MESSAGE_ID, format!("bulk-{i}")),
        (h::FAILURE_KIND, "transient".to_owned()),
        (h::FAILURE_CODE, code.to_owned()),
        (h::FAILURE_FINGERPRINT, fingerprint),
        (h::FAILURE_SOURCE, source.to_owned()),
        (h::FAILURE_LAST_AT, now),
    ] {
        message.headers.insert(h::name(name), value);
    }
    message
}

/// 10,000 records with `pad` bytes of payload each: the overview counts them all, a
/// group's records are paged (50 a page, the last page reachable), and the console's
/// memory stays bounded; prints the time to render the overview.
pub async fn ten_thousand_records_are_paged(drill: &mut impl Drill, pad: usize) {
    let queue = drill.queue().to_owned();
    dlq::declare_topology(drill);
    let records: Vec<Message> =
        (0..10_000).map(|i| bulk(i, if i % 10 < 7 { "bulk_a" } else { "bulk_b" }, &queue, pad)).collect();
    drill.publish(&format!("{queue}.dlq"), records).await;
    dlq::wait_for_dead_letters(drill, 10_000, false);

    let (console, port) = console(drill, "console-ten-thousand", None);
    let browser = Browser::start().await;
    let home = format!("http://127.0.0.1:{port}/");
    let mut timings = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        browser.open(&home).await;
        timings.push(started.elapsed());
        let footer = browser.text("footer").await.unwrap_or_default();
        println!("overview of 10,000 records: {:?} in the browser; {footer}", started.elapsed());
    }
    assert_eq!(browser.text("#queue-greeter-dlq .total").await.as_deref(), Some("10000"));
    assert_eq!(browser.count("#queue-greeter-dlq tr.group").await, 2);
    timings.sort();
    println!("overview render, median of 3: {:?}", timings[1]);

    let bulk_a = courier::contract::failure::fingerprint(FailureKind::Transient, "greeter", "bulk_a");
    browser.open(&group_url(port, &bulk_a)).await;
    let pager = browser.text(".pager").await.unwrap_or_default();
    assert!(pager.contains("7000 record(s)") && pager.contains("page 1 of 140"), "{pager}");
    assert_eq!(browser.count("article.record").await, 50);
    let first = browser.text("article.record h3").await;
    browser.click("#next").await;
    assert!(browser.url().await.contains("page=2"));
    assert_eq!(browser.count("article.record").await, 50);
    assert_ne!(browser.text("article.record h3").await, first, "page 2 shows other records");
    browser.open(&format!("{}&page=140", group_url(port, &bulk_a))).await;
    assert_eq!(browser.count("article.record").await, 50);
    assert_eq!(browser.count("#next").await, 0, "the last page");
    let peak = peak_memory_kib(console.pid());
    assert!(peak > 0, "no VmHWM in /proc/{}/status", console.pid());
    println!("console peak memory (VmHWM) after paging 10,000 records: {} KiB", peak);
    assert!(peak < MAX_PEAK_KIB, "the console held {peak} KiB at its peak: it keeps more than a page");
    assert_eq!(dlq::dlq_total(drill, false), 10_000, "reading removes nothing");
    browser.close().await;
}

/// The console's peak resident memory above which it holds more than a page: with 4 KiB
/// of payload a record (RabbitMQ), the queue's 40 MiB of payloads alone, shown, would pass it.
pub const MAX_PEAK_KIB: u64 = 64 * 1024;

fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The console drills for one broker: `console_drills!(<expression giving a fresh Drill>,
/// <payload padding of the 10,000 records>)`.
#[macro_export]
macro_rules! console_drills {
    ($drill:expr, $pad:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_console_shows_groups_previews_and_replays_a_group_in_the_browser() {
            let mut drill = $drill;
            courier_tests::console::browse_preview_and_replay(&mut drill).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn console_actions_need_the_token_a_session_and_the_consoles_own_form() {
            let mut drill = $drill;
            courier_tests::console::actions_need_the_token_a_session_and_the_consoles_own_form(&mut drill).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_console_pages_ten_thousand_records() {
            let mut drill = $drill;
            courier_tests::console::ten_thousand_records_are_paged(&mut drill, $pad).await;
        }
    };
}
