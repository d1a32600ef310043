//! What the console makes of a queue's records: counts by kind, code and failure group,
//! when they failed and how the queue grew over the last hour ([`Summary`]); and one page
//! of the records that match a selection ([`Page`]). Pure and fed one record at a time:
//! what it holds is bounded whatever the queue holds, and whatever the records' headers say.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use courier::{
    contract::{headers as h, timestamp},
    transport::Message,
};

/// Failure groups kept apart; records of any further group are counted together.
pub const MAX_GROUPS: usize = 500;
/// Distinct kinds or codes kept apart; further ones are counted together.
pub const MAX_VALUES: usize = 50;
/// The last hour in this many buckets (of five minutes).
pub const BUCKETS: usize = 12;
const HOUR: Duration = Duration::from_secs(3600);
/// Header text kept per field: a value is data from a record, never trusted to be short.
const MAX_FIELD: usize = 200;
/// An error message's sample is kept this long.
const MAX_SAMPLE: usize = 400;

/// Records per five minutes over the last hour, oldest first.
pub type Growth = [u64; BUCKETS];

/// A queue's records, counted.
#[derive(Clone, Debug)]
pub struct Summary {
    /// When "the last hour" ends.
    now: SystemTime,
    /// Records counted.
    pub total: u64,
    /// By `courier-failure-kind`.
    pub kinds: Tally,
    /// By `courier-failure-code`.
    pub codes: Tally,
    /// By `courier-failure-fingerprint` ("" for records without one).
    groups: BTreeMap<String, Group>,
    /// Records of groups beyond [`MAX_GROUPS`].
    pub other_groups: u64,
    /// Earliest and latest `courier-failure-last-at`.
    pub span: Span,
    /// Records that last failed within the last hour, by five minutes.
    pub growth: Growth,
}

/// Counts by a header's value, at most [`MAX_VALUES`] values apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Value → records.
    counts: BTreeMap<String, u64>,
    /// Records whose value came after the cap.
    pub other: u64,
}

/// The earliest and latest failure time seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// Earliest.
    pub oldest: Option<SystemTime>,
    /// Latest.
    pub newest: Option<SystemTime>,
}

/// One failure group: the records that share a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// `courier-failure-fingerprint`; "" for records without one (not Courier's).
    pub fingerprint: String,
    /// `courier-failure-kind` of its first record.
    pub kind: String,
    /// `courier-failure-code` of its first record.
    pub code: String,
    /// `courier-failure-worker` of its first record.
    pub worker: String,
    /// `courier-failure-source` of its first record.
    pub source: String,
    /// `courier-failure-message` of its first record.
    pub sample: String,
    /// Records in the group.
    pub count: u64,
    /// When they failed.
    pub span: Span,
    /// Its records within the last hour.
    pub growth: Growth,
}

impl Summary {
    /// Nothing counted yet; "the last hour" ends at `now`.
    pub fn new(now: SystemTime) -> Self {
        Self {
            now,
            total: 0,
            kinds: Tally::default(),
            codes: Tally::default(),
            groups: BTreeMap::new(),
            other_groups: 0,
            span: Span::default(),
            growth: [0; BUCKETS],
        }
    }

    /// Count one record.
    pub fn add(&mut self, record: &Message) {
        let field = |name: &str, max: usize| {
            record.headers.get(name).map(|v| h::truncate(v, max).to_owned()).unwrap_or_default()
        };
        let at = record.headers.get(h::FAILURE_LAST_AT).and_then(|v| timestamp::parse(v));
        let bucket = at.and_then(|at| bucket(self.now, at));
        self.total += 1;
        self.kinds.add(record.headers.get(h::FAILURE_KIND).map_or("", |v| h::truncate(v, MAX_FIELD)));
        self.codes.add(record.headers.get(h::FAILURE_CODE).map_or("", |v| h::truncate(v, MAX_FIELD)));
        self.span.add(at);
        if let Some(b) = bucket {
            self.growth[b] += 1;
        }
        let fingerprint = fingerprint(record).to_owned();
        if !self.groups.contains_key(&fingerprint) && self.groups.len() >= MAX_GROUPS {
            self.other_groups += 1;
            return;
        }
        let group = self.groups.entry(fingerprint).or_insert_with_key(|fingerprint| Group {
            fingerprint: fingerprint.clone(),
            kind: field(h::FAILURE_KIND, MAX_FIELD),
            code: field(h::FAILURE_CODE, MAX_FIELD),
            worker: field(h::FAILURE_WORKER, MAX_FIELD),
            source: field(h::FAILURE_SOURCE, MAX_FIELD),
            sample: field(h::FAILURE_MESSAGE, MAX_SAMPLE),
            count: 0,
            span: Span::default(),
            growth: [0; BUCKETS],
        });
        group.count += 1;
        group.span.add(at);
        if let Some(b) = bucket {
            group.growth[b] += 1;
        }
    }

    /// The groups, largest first.
    pub fn groups(&self) -> Vec<&Group> {
        let mut groups: Vec<&Group> = self.groups.values().collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
        groups
    }

    /// Whether a group's first failure falls within the last hour.
    pub fn is_new(&self, group: &Group) -> bool {
        group.span.oldest.is_some_and(|oldest| bucket(self.now, oldest).is_some())
    }
}

/// A record's failure fingerprint; "" without one, or with one too long to be Courier's
/// (a group is named by its whole fingerprint, and a page or an action selects by it).
fn fingerprint(record: &Message) -> &str {
    let given = record.headers.get(h::FAILURE_FINGERPRINT).map_or("", String::as_str);
    if given.len() <= MAX_FIELD { given } else { "" }
}

/// The bucket of the last hour a failure at `at` falls in (the last one for a time ahead
/// of `now`: clocks differ), or `None` when it is older.
fn bucket(now: SystemTime, at: SystemTime) -> Option<usize> {
    let age = now.duration_since(at).unwrap_or_default();
    if age >= HOUR {
        return None;
    }
    let width = HOUR.as_secs() / BUCKETS as u64;
    Some(BUCKETS - 1 - (age.as_secs() / width) as usize)
}

impl Tally {
    fn add(&mut self, value: &str) {
        if let Some(count) = self.counts.get_mut(value) {
            *count += 1;
        } else if self.counts.len() < MAX_VALUES {
            self.counts.insert(value.to_owned(), 1);
        } else {
            self.other += 1;
        }
    }

    /// `(value, records)`, most records first.
    pub fn largest_first(&self) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.counts.iter().map(|(v, n)| (v.as_str(), *n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        all
    }
}

impl Span {
    fn add(&mut self, at: Option<SystemTime>) {
        let Some(at) = at else { return };
        self.oldest = Some(self.oldest.map_or(at, |oldest| oldest.min(at)));
        self.newest = Some(self.newest.map_or(at, |newest| newest.max(at)));
    }
}

/// Records per bucket as bars, one character each (`▁` to `█`, a space for none).
pub fn sparkline(growth: &Growth) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let top = growth.iter().copied().max().unwrap_or(0).max(1);
    growth.iter().map(|&n| if n == 0 { ' ' } else { BARS[((n * 8).div_ceil(top) - 1) as usize] }).collect()
}

/// Which records a page or an action is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// `None`: every record; `Some("")`: the records without a fingerprint.
    pub fingerprint: Option<String>,
    /// Only the copies of this message.
    pub message_id: Option<String>,
}

impl Selection {
    /// Whether `record` is selected.
    pub fn matches(&self, record: &Message) -> bool {
        self.fingerprint.as_deref().is_none_or(|f| fingerprint(record) == f)
            && self.message_id.as_deref().is_none_or(|id| record.headers.get(h::MESSAGE_ID).is_some_and(|m| m == id))
    }
}

/// One page of the records a scan offers: page `number` (from 0) of `size` records.
#[derive(Clone, Debug)]
pub struct Page<T> {
    /// The records on this page, in queue order.
    pub records: Vec<T>,
    /// Records offered so far (on every page).
    pub matched: u64,
    /// This page's number, from 0.
    pub number: u64,
    /// Records per page.
    pub size: usize,
}

impl<T> Page<T> {
    /// Page `number` of `size` records (at least 1).
    pub fn new(number: u64, size: usize) -> Self {
        Self { records: Vec::new(), matched: 0, number, size: size.max(1) }
    }

    /// Count a record; `make` builds what the page keeps, only for records on it.
    pub fn offer(&mut self, make: impl FnOnce() -> T) {
        let first = self.number.saturating_mul(self.size as u64);
        if self.matched >= first && self.records.len() < self.size {
            self.records.push(make());
        }
        self.matched += 1;
    }

    /// Pages the records offered fill (at least 1).
    pub fn pages(&self) -> u64 {
        self.matched.div_ceil(self.size as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(2_000_000_000);

    fn at(seconds_ago: u64) -> String {
        timestamp::format(SystemTime::UNIX_EPOCH + NOW - Duration::from_secs(seconds_ago))
    }

    fn record(fingerprint: &str, code: &str, seconds_ago: u64) -> Message {
        let mut message = Message::default();
        for (name, value) in [
            (h::FAILURE_FINGERPRINT, fingerprint.to_owned()),
            (h::FAILURE_KIND, "transient".to_owned()),
            (h::FAILURE_CODE, code.to_owned()),
            (h::FAILURE_LAST_AT, at(seconds_ago)),
            (h::FAILURE_MESSAGE, format!("failed {seconds_ago}s ago")),
        ] {
            message.headers.insert(h::name(name), value);
        }
        message
    }

    fn summary(records: &[Message]) -> Summary {
        let mut summary = Summary::new(SystemTime::UNIX_EPOCH + NOW);
        records.iter().for_each(|r| summary.add(r));
        summary
    }

    #[test]
    fn groups_kinds_and_codes_are_counted_largest_first() {
        let s = summary(&[record("a", "x", 10), record("b", "y", 20), record("a", "y", 7200)]);
        assert_eq!(s.total, 3);
        let groups = s.groups();
        assert_eq!(groups.iter().map(|g| (g.fingerprint.as_str(), g.count)).collect::<Vec<_>>(), [("a", 2), ("b", 1)]);
        assert_eq!(groups[0].code, "x", "a group shows its first record's code");
        assert_eq!(groups[0].sample, "failed 10s ago");
        assert_eq!(s.codes.largest_first(), [("y", 2), ("x", 1)]);
        assert_eq!(s.kinds.largest_first(), [("transient", 3)]);
        assert_eq!(s.span.oldest.map(timestamp::format), Some(at(7200)));
        assert_eq!(s.span.newest.map(timestamp::format), Some(at(10)));
        assert!(!s.is_new(groups[0]), "a's first failure is two hours old");
        assert!(s.is_new(groups[1]));
    }

    #[test]
    fn the_last_hour_is_counted_by_five_minutes_oldest_first() {
        let s = summary(&[record("a", "x", 0), record("a", "x", 299), record("a", "x", 300), record("a", "x", 3599)]);
        let mut expected = [0; BUCKETS];
        expected[11] = 2;
        expected[10] = 1;
        expected[0] = 1;
        assert_eq!(s.growth, expected);
        assert_eq!(s.groups()[0].growth, expected);
        // An hour ago or more, or no time at all: not in the last hour; ahead of the clock: now.
        let mut odd = record("a", "x", 3600);
        let s = summary(&[odd.clone()]);
        assert_eq!(s.growth, [0; BUCKETS]);
        odd.headers.insert(h::name(h::FAILURE_LAST_AT), timestamp::format(SystemTime::UNIX_EPOCH + NOW * 2));
        assert_eq!(summary(&[odd.clone()]).growth[11], 1);
        odd.headers.insert(h::name(h::FAILURE_LAST_AT), "yesterday".into());
        let s = summary(&[odd]);
        assert_eq!((s.growth, s.span), ([0; BUCKETS], Span::default()));
    }

    #[test]
    fn hostile_headers_are_held_in_bounded_memory() {
        let many: Vec<Message> = (0..MAX_GROUPS + 20).map(|i| record(&format!("f{i}"), &format!("c{i}"), 1)).collect();
        let s = summary(&many);
        assert_eq!((s.groups().len(), s.other_groups), (MAX_GROUPS, 20));
        assert_eq!(
            (s.codes.largest_first().len() as u64, s.codes.other),
            (MAX_VALUES as u64, (MAX_GROUPS + 20 - MAX_VALUES) as u64)
        );
        let huge = record(&"f".repeat(100_000), &"c".repeat(100_000), 1);
        let s = summary(std::slice::from_ref(&huge));
        assert_eq!(s.groups()[0].fingerprint, "", "too long to be Courier's: with the records without one");
        assert!(Selection { fingerprint: Some(String::new()), message_id: None }.matches(&huge));
        assert_eq!(s.codes.largest_first()[0].0.len(), MAX_FIELD);
    }

    #[test]
    fn records_without_failure_headers_form_one_group() {
        let s = summary(&[Message::default(), Message::default()]);
        assert_eq!(s.groups().len(), 1);
        assert_eq!((s.groups()[0].fingerprint.as_str(), s.groups()[0].count), ("", 2));
        assert!(Selection { fingerprint: Some(String::new()), message_id: None }.matches(&Message::default()));
        assert!(!Selection { fingerprint: Some("a".into()), message_id: None }.matches(&Message::default()));
        assert!(Selection::default().matches(&Message::default()));
    }

    #[test]
    fn a_selection_of_one_message_needs_its_id() {
        let mut r = record("a", "x", 1);
        let one = Selection { fingerprint: Some("a".into()), message_id: Some("m1".into()) };
        assert!(!one.matches(&r));
        r.headers.insert(h::name(h::MESSAGE_ID), "m1".into());
        assert!(one.matches(&r));
        assert!(!Selection { message_id: Some("m2".into()), ..one }.matches(&r));
    }

    #[test]
    fn a_page_keeps_only_its_records_and_counts_all() {
        let mut page = Page::new(2, 10);
        let mut built = 0;
        for i in 0..95 {
            page.offer(|| {
                built += 1;
                i
            });
        }
        assert_eq!(page.records, (20..30).collect::<Vec<_>>());
        assert_eq!((built, page.matched, page.pages()), (10, 95, 10));
        let mut past = Page::<u32>::new(99, 10);
        past.offer(|| 1);
        assert!(past.records.is_empty());
        assert_eq!(Page::<u32>::new(0, 0).pages(), 1);
    }

    #[test]
    fn sparklines_scale_to_the_busiest_bucket() {
        let mut growth = [0; BUCKETS];
        growth[0] = 1;
        growth[11] = 8;
        growth[5] = 4;
        let line = sparkline(&growth);
        assert_eq!(line.chars().count(), BUCKETS);
        assert_eq!(line.chars().next(), Some('▁'));
        assert_eq!(line.chars().nth(5), Some('▄'));
        assert_eq!(line.chars().last(), Some('█'));
        assert_eq!(sparkline(&[0; BUCKETS]), " ".repeat(BUCKETS));
    }
}
