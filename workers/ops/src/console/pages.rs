//! The console's pages: what each template is given, already in words and numbers. The
//! templates (`workers/ops/templates`) escape every value they print: a record's payload or
//! header is text on the page, never markup.

use std::time::SystemTime;

use askama::Template;
use courier::contract::timestamp;

use super::{
    jobs::Job,
    scan::{self, Group, Summary},
    view::RecordView,
};

/// What every page shows around its content.
#[derive(Clone, Debug, Default)]
pub struct Base {
    /// The page's title.
    pub title: String,
    /// The signed-in operator, if any.
    pub operator: Option<String>,
    /// The session's form token (for the sign-out form).
    pub form_token: String,
    /// Whether the console can act at all (it has a token).
    pub writable: bool,
    /// The footer: how long reading the broker took.
    pub footer: String,
}

/// A link to a running action.
#[derive(Clone, Debug)]
pub struct JobLink {
    /// Its page.
    pub href: String,
    /// What it is doing.
    pub text: String,
}

impl JobLink {
    /// The link to `job`.
    pub fn of(job: &Job) -> Self {
        let state = job.state();
        Self {
            href: format!("/jobs/{}", job.id),
            text: format!(
                "{} {} by {}: {} read, {} replayed, {} parked, {} purged",
                job.plan.action,
                job.plan.selection,
                job.plan.operator,
                state.summary.read,
                state.summary.replayed,
                state.summary.parked,
                state.summary.purged
            ),
        }
    }
}

/// The overview: every queue.
#[derive(Template)]
#[template(path = "overview.html")]
pub struct Overview {
    /// Around it.
    pub base: Base,
    /// One per queue.
    pub cards: Vec<Card>,
}

/// One queue on the overview.
#[derive(Clone, Debug)]
pub struct Card {
    /// The worker.
    pub worker: String,
    /// `dlq` or `parking`.
    pub slug: &'static str,
    /// `dead-letter queue` or `parking queue`.
    pub label: &'static str,
    /// Its name on the broker.
    pub name: String,
    /// Its records' page.
    pub href: String,
    /// Its counts, when it was read.
    pub counted: Option<Counted>,
    /// The action running on it, if that kept it from being read.
    pub busy: Option<JobLink>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// A queue's counts, in words.
#[derive(Clone, Debug)]
pub struct Counted {
    /// Records.
    pub total: u64,
    /// Groups: the number listed, with `+` when more are counted together.
    pub group_count: String,
    /// `(kind, records)`.
    pub kinds: Vec<(String, u64)>,
    /// `(code, records)`.
    pub codes: Vec<(String, u64)>,
    /// The groups, largest first.
    pub groups: Vec<GroupRow>,
    /// Records of groups not listed.
    pub other_groups: u64,
    /// The oldest failure.
    pub oldest: String,
    /// The newest failure.
    pub newest: String,
    /// Records of the last hour.
    pub last_hour: u64,
    /// The last hour by five minutes.
    pub sparkline: String,
    /// The scan ran out of time.
    pub partial: bool,
}

/// One failure group on the overview.
#[derive(Clone, Debug)]
pub struct GroupRow {
    /// Its records' page.
    pub href: String,
    /// Its fingerprint, or a note that it has none.
    pub fingerprint: String,
    /// Kind, code, source and error message of its first record.
    pub kind: String,
    /// See `kind`.
    pub code: String,
    /// See `kind`.
    pub source: String,
    /// See `kind`.
    pub sample: String,
    /// Records.
    pub count: u64,
    /// When they failed.
    pub oldest: String,
    /// See `oldest`.
    pub newest: String,
    /// Records of the last hour.
    pub last_hour: u64,
    /// The last hour by five minutes.
    pub sparkline: String,
    /// Its first failure is within the last hour.
    pub new: bool,
}

impl Counted {
    /// The counts of `summary`; `href` makes a group's link from its fingerprint.
    pub fn of(summary: &Summary, partial: bool, href: impl Fn(&str) -> String) -> Self {
        let owned = |tally: &scan::Tally| {
            let mut all: Vec<(String, u64)> = tally.largest_first().into_iter().map(|(v, n)| (or_none(v), n)).collect();
            if tally.other > 0 {
                all.push(("(others)".to_owned(), tally.other));
            }
            all
        };
        let groups: Vec<GroupRow> = summary.groups().into_iter().map(|g| row(summary, g, &href)).collect();
        Self {
            total: summary.total,
            group_count: format!("{}{}", groups.len(), if summary.other_groups > 0 { "+" } else { "" }),
            kinds: owned(&summary.kinds),
            codes: owned(&summary.codes),
            groups,
            other_groups: summary.other_groups,
            oldest: when(summary.span.oldest),
            newest: when(summary.span.newest),
            last_hour: summary.growth.iter().sum(),
            sparkline: scan::sparkline(&summary.growth),
            partial,
        }
    }
}

fn row(summary: &Summary, g: &Group, href: impl Fn(&str) -> String) -> GroupRow {
    GroupRow {
        href: href(&g.fingerprint),
        fingerprint: if g.fingerprint.is_empty() {
            "(no fingerprint: not Courier's)".to_owned()
        } else {
            g.fingerprint.clone()
        },
        kind: or_none(&g.kind),
        code: or_none(&g.code),
        source: or_none(&g.source),
        sample: g.sample.clone(),
        count: g.count,
        oldest: when(g.span.oldest),
        newest: when(g.span.newest),
        last_hour: g.growth.iter().sum(),
        sparkline: scan::sparkline(&g.growth),
        new: summary.is_new(g),
    }
}

fn or_none(value: &str) -> String {
    if value.is_empty() { "-".to_owned() } else { value.to_owned() }
}

/// A time as the contract writes it, or `-`.
pub fn when(at: Option<SystemTime>) -> String {
    at.map_or_else(|| "-".to_owned(), timestamp::format)
}

/// A page of records.
#[derive(Template)]
#[template(path = "records.html")]
pub struct Records {
    /// Around it.
    pub base: Base,
    /// The group, or "every record".
    pub heading: String,
    /// The queue.
    pub queue: String,
    /// Which records, in words.
    pub selection: String,
    /// The group's error message.
    pub sample: Option<String>,
    /// Why the queue could not be read.
    pub error: Option<String>,
    /// The action that kept it from being read.
    pub busy: Option<JobLink>,
    /// The records on this page.
    pub records: Vec<RecordView>,
    /// Records selected.
    pub matched: u64,
    /// This page (from 1) and the pages.
    pub page: u64,
    /// See `page`.
    pub pages: u64,
    /// The neighbours.
    pub prev: Option<String>,
    /// See `prev`.
    pub next: Option<String>,
    /// The scan ran out of time.
    pub partial: bool,
    /// The action forms, for a signed-in operator.
    pub forms: Option<Forms>,
}

/// What the action forms carry.
#[derive(Clone, Debug)]
pub struct Forms {
    /// The session's form token.
    pub form_token: String,
    /// Where a preview is asked for.
    pub preview: String,
    /// The group's fingerprint (`None`: every record).
    pub fingerprint: Option<String>,
    /// The actions offered.
    pub actions: Vec<&'static str>,
    /// Whether they are offered for the whole selection (records without a fingerprint
    /// are acted on one message at a time).
    pub group: bool,
    /// "this group", "every record".
    pub scope: String,
}

/// A dry run's findings and the form that runs it.
#[derive(Template)]
#[template(path = "preview.html")]
pub struct PreviewPage {
    /// Around it.
    pub base: Base,
    /// `replay`, `park`, `purge`.
    pub action: &'static str,
    /// `replayed`, `parked`, `purged`.
    pub verb: &'static str,
    /// Which records, in words.
    pub scope: String,
    /// The queue.
    pub queue: String,
    /// What would become of the records read.
    pub summary: crate::dlq::Summary,
    /// The time bound ended the dry run before the last record.
    pub partial: bool,
    /// Records the action itself would handle.
    pub count: u64,
    /// Records that would stay.
    pub staying_count: u64,
    /// Where they would go.
    pub destination: String,
    /// Records per second.
    pub rate: u32,
    /// The largest rate the form takes.
    pub max_rate: u32,
    /// How long it would take at that rate.
    pub estimate: String,
    /// The first planned records.
    pub planned: Vec<(String, String)>,
    /// The first staying records, and why.
    pub staying: Vec<(String, String)>,
    /// The session's form token.
    pub form_token: String,
    /// Where the form goes.
    pub run: String,
    /// The records' page.
    pub back: String,
    /// The selection, carried on.
    pub fingerprint: Option<String>,
    /// See `fingerprint`.
    pub message_id: Option<String>,
}

/// An action's progress.
#[derive(Template)]
#[template(path = "job.html")]
pub struct JobPage {
    /// Around it.
    pub base: Base,
    /// The job.
    pub job: std::sync::Arc<Job>,
    /// Its counts so far.
    pub summary: crate::dlq::Summary,
    /// Whether it runs (the page then reloads itself each second).
    pub running: bool,
    /// "running", "done", "failed: …".
    pub state: String,
    /// `busy`, `` or `error`.
    pub state_class: &'static str,
    /// When it started.
    pub started: String,
    /// How long it ran.
    pub elapsed: String,
}

/// Every remembered action.
#[derive(Template)]
#[template(path = "jobs.html")]
pub struct JobsPage {
    /// Around it.
    pub base: Base,
    /// Newest first.
    pub rows: Vec<JobRow>,
}

/// One remembered action.
#[derive(Clone, Debug)]
pub struct JobRow {
    /// Its page.
    pub href: String,
    /// Its number.
    pub id: u64,
    /// Action and selection.
    pub what: String,
    /// The queue.
    pub queue: String,
    /// Who.
    pub operator: String,
    /// When.
    pub started: String,
    /// How it stands.
    pub state: String,
}

/// The sign-in form.
#[derive(Template)]
#[template(path = "sign_in.html")]
pub struct SignIn {
    /// Around it.
    pub base: Base,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// A refusal or an error.
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    /// Around it.
    pub base: Base,
    /// What happened.
    pub heading: String,
    /// Why.
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier::contract::headers as h;
    use courier::transport::{
        Message,
        dead_letters::{Record, RecordId},
    };

    const SCRIPT: &str = "\"' autofocus onfocus=x><script>document.title='owned'</script>";

    fn hostile() -> Message {
        let mut message = Message { payload: SCRIPT.as_bytes().to_vec().into(), ..Message::default() };
        for name in [h::FAILURE_FINGERPRINT, h::FAILURE_CODE, h::FAILURE_MESSAGE, h::MESSAGE_ID, h::FAILURE_SOURCE] {
            message.headers.insert(h::name(name), SCRIPT.to_owned());
        }
        message.headers.insert("x-<b>".into(), SCRIPT.to_owned());
        message
    }

    /// Every value a record gives is escaped on every page that shows it.
    #[test]
    fn a_records_markup_is_text_on_every_page() {
        let mut summary = Summary::new(SystemTime::now());
        summary.add(&hostile());
        let card = Card {
            worker: "w".into(),
            slug: "dlq",
            label: "dead-letter queue",
            name: "w.dlq".into(),
            href: "/queues/w/dlq".into(),
            counted: Some(Counted::of(&summary, false, |f| format!("/queues/w/dlq?fingerprint={f}"))),
            busy: None,
            error: None,
        };
        let overview = Overview { base: Base::default(), cards: vec![card] }.render().expect("renders");
        let view = RecordView::of(&Record { id: RecordId::Position(1), message: hostile() }, None);
        let records = Records {
            base: Base::default(),
            heading: SCRIPT.into(),
            queue: "w.dlq".into(),
            selection: SCRIPT.into(),
            sample: Some(SCRIPT.into()),
            error: None,
            busy: None,
            records: vec![view],
            matched: 1,
            page: 1,
            pages: 1,
            prev: None,
            next: None,
            partial: false,
            forms: Some(Forms {
                form_token: "t".into(),
                preview: "/p".into(),
                fingerprint: Some(SCRIPT.into()),
                actions: vec!["replay"],
                group: true,
                scope: "this group".into(),
            }),
        }
        .render()
        .expect("renders");
        for page in [&overview, &records] {
            assert!(!page.contains("<script"), "{page}");
            assert!(!page.contains("<b>"), "{page}");
            assert!(!page.contains("\"' autofocus"), "a value left its attribute: {page}");
            assert!(page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"), "{page}");
        }
    }
}
