//! The console's addresses and what each answers. Every page reads the broker afresh;
//! every action is checked ([`Access::authorize`]), written to the log with who, from
//! where and what, and runs in the background with a page of its own.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Extension, Form, Router,
    extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use courier::{Broker, contract::headers as h};
use serde::Deserialize;

use super::{
    access::{self, Access, Origin, Refused, Session},
    jobs::{Jobs, Plan},
    pages::{
        self, Base, Card, Counted, Forms, JobLink, JobPage, JobRow, JobsPage, MessagePage, Overview, PreviewPage,
        Records, SignIn,
    },
    proto::FieldNames,
    queues::{Action, Limits, Queue, QueueError, Which},
    scan::{Page, Selection, Summary},
    view::RecordView,
};

/// A form is small: an action's fields, or a token.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// A wrong token waits this long for its answer, so guessing one is slow.
const WRONG_TOKEN_PAUSE: Duration = Duration::from_millis(500);

/// Everything the pages need.
#[derive(Debug)]
pub struct Console {
    /// Where the queues are.
    pub broker: Broker,
    /// Each worker's dead-letter and parking queue.
    pub queues: Vec<Arc<Queue>>,
    /// Who may act.
    pub access: Access,
    /// Actions started.
    pub jobs: Jobs,
    /// The operator's settings.
    pub settings: Settings,
    /// Worker → its request's protobuf field names.
    pub names: HashMap<String, FieldNames>,
    /// Host names a request may be addressed to (without port).
    pub hosts: Vec<String>,
    /// One sign-in checked at a time, and a wrong token's pause inside it: guessing the
    /// token takes [`WRONG_TOKEN_PAUSE`] a guess however many connections try.
    pub sign_in_gate: tokio::sync::Mutex<()>,
}

/// The console's own settings: none of them comes from a request.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// An action's rate unless the operator picks another.
    pub rate: u32,
    /// The largest rate an operator may pick.
    pub max_rate: u32,
    /// Replays from a dead-letter queue park records replayed this often.
    pub max_replays: u32,
    /// Records per page.
    pub page_size: usize,
    /// How long a page may read a queue.
    pub scan_timeout: Duration,
}

/// The console's pages on `console`.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/healthz", get(|| async { "ok" }))
        .route("/console.css", get(css))
        .route("/queues/{worker}/{which}", get(records))
        .route("/queues/{worker}/{which}/preview", post(preview))
        .route("/queues/{worker}/{which}/run", post(run))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", post(sign_out))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&console), own_host))
        .layer(axum::middleware::map_response(guard_headers))
        .with_state(console)
}

/// Answer only requests addressed to this console by a name it knows (`--public-host`, or
/// this machine's own names): a page elsewhere that points its own name at this address
/// (DNS rebinding) is refused, and cannot read records through the operator's browser.
async fn own_host(
    State(console): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = header_text(request.headers(), header::HOST).unwrap_or_default();
    if request.uri().path() == "/healthz" || host_allowed(host, &console.hosts) {
        return next.run(request).await;
    }
    tracing::warn!(host = %courier::contract::headers::truncate(host, 200), "Console request to an unknown host refused.");
    let text = "this console does not answer to that host name: give it with --public-host";
    (StatusCode::MISDIRECTED_REQUEST, text).into_response()
}

/// Whether `host` (a `Host` header: a name or address, perhaps with a port) is one of `hosts`.
pub fn host_allowed(host: &str, hosts: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().map(|inner| format!("[{inner}]")).unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name).to_owned(),
    };
    hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(&name))
}

/// No script, no frame, no other site's resource: a record that got past the escaping
/// still could not run anything. Nothing is cached: pages show records. The referrer goes
/// to this console only (with `no-referrer` a browser sends `Origin: null` on the
/// console's own forms, which [`Access`] refuses).
async fn guard_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../../templates/console.css"))
}

type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn peer(peer: &Peer) -> String {
    peer.as_ref().map_or_else(|| "unknown".to_owned(), |Extension(ConnectInfo(addr))| addr.to_string())
}

fn header_text(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn origin(headers: &HeaderMap) -> Origin<'_> {
    Origin {
        host: header_text(headers, header::HOST),
        origin: header_text(headers, header::ORIGIN),
        fetch_site: header_text(headers, "sec-fetch-site"),
    }
}

impl Console {
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        self.access.session(header_text(headers, header::COOKIE))
    }

    fn base(&self, headers: &HeaderMap, title: impl Into<String>) -> Base {
        let session = self.session(headers);
        Base {
            title: title.into(),
            form_token: session.as_ref().map(|s| s.form_token.clone()).unwrap_or_default(),
            operator: session.map(|s| s.operator),
            writable: self.access.writable(),
            footer: String::new(),
        }
    }

    fn queue(&self, worker: &str, which: &str) -> Option<&Arc<Queue>> {
        self.queues.iter().find(|q| q.worker == worker && q.which.slug() == which)
    }
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("the page could not be rendered: {error}")).into_response()
        }
    }
}

fn message(base: Base, status: StatusCode, heading: &str, text: impl Into<String>) -> Response {
    render(status, &MessagePage { base, heading: heading.to_owned(), text: text.into() })
}

fn not_found(console: &Console, headers: &HeaderMap) -> Response {
    message(console.base(headers, "Not found"), StatusCode::NOT_FOUND, "Not found", "No such queue or action here.")
}

fn records_href(queue: &Queue, fingerprint: Option<&str>, page: u64) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(f) = fingerprint {
        query.append_pair("fingerprint", f);
    }
    if page > 1 {
        query.append_pair("page", &page.to_string());
    }
    let query = query.finish();
    let path = format!("/queues/{}/{}", queue.worker, queue.which.slug());
    if query.is_empty() { path } else { format!("{path}?{query}") }
}

async fn overview(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let started = std::time::Instant::now();
    let mut cards = Vec::with_capacity(console.queues.len());
    let mut read = 0;
    for queue in &console.queues {
        let mut summary = Summary::new(std::time::SystemTime::now());
        let scanned = queue.scan(&console.broker, console.settings.scan_timeout, |r| summary.add(&r.message)).await;
        let mut card = Card {
            worker: queue.worker.clone(),
            slug: queue.which.slug(),
            label: queue.which.label(),
            name: queue.name.clone(),
            href: records_href(queue, None, 1),
            counted: None,
            busy: None,
            error: None,
        };
        match scanned {
            Ok(scanned) => {
                read += scanned.read;
                card.counted = Some(Counted::of(&summary, scanned.partial, |f| records_href(queue, Some(f), 1)));
            }
            Err(QueueError::Busy(job)) => card.busy = Some(JobLink::of(&job)),
            Err(error) => card.error = Some(error.to_string()),
        }
        cards.push(card);
    }
    let mut base = console.base(&headers, "Overview");
    base.footer =
        format!("Read {read} record(s) of {} queue(s) in {} ms.", console.queues.len(), started.elapsed().as_millis());
    render(StatusCode::OK, &Overview { base, cards })
}

#[derive(Debug, Deserialize)]
struct RecordsQuery {
    /// Absent: every record; empty: the records without a fingerprint.
    fingerprint: Option<String>,
    /// From 1.
    page: Option<u64>,
}

async fn records(
    State(console): State<Arc<Console>>,
    Path((worker, which)): Path<(String, String)>,
    Query(query): Query<RecordsQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(queue) = console.queue(&worker, &which) else { return not_found(&console, &headers) };
    let number = query.page.unwrap_or(1).max(1);
    let selection = Selection { fingerprint: query.fingerprint.clone(), message_id: None };
    let names = console.names.get(&queue.worker);
    let mut page = Page::new(number - 1, console.settings.page_size);
    let mut sample = None;
    let scanned = queue
        .scan(&console.broker, console.settings.scan_timeout, |record| {
            if selection.matches(&record.message) {
                if sample.is_none() {
                    sample = record.message.headers.get(h::FAILURE_MESSAGE).map(|m| h::truncate(m, 400).to_owned());
                }
                page.offer(|| RecordView::of(record, names));
            }
        })
        .await;
    let (heading, scope) = match query.fingerprint.as_deref() {
        None => ("Every record".to_owned(), "every record".to_owned()),
        Some("") => ("Records without a failure fingerprint".to_owned(), "records without a fingerprint".to_owned()),
        Some(f) => (format!("Failure group {f}"), "this failure group".to_owned()),
    };
    let mut base = console.base(&headers, heading.clone());
    let forms = console.session(&headers).map(|session| Forms {
        form_token: session.form_token,
        preview: format!("/queues/{}/{}/preview", queue.worker, queue.which.slug()),
        fingerprint: query.fingerprint.clone(),
        actions: match queue.which {
            Which::DeadLetters => vec!["replay", "park", "purge"],
            Which::Parking => vec!["replay", "purge"],
        },
        group: query.fingerprint.as_deref() != Some(""),
        scope: scope.clone(),
    });
    let (mut error, mut busy, mut partial) = (None, None, false);
    match &scanned {
        Ok(scanned) => {
            partial = scanned.partial;
            base.footer = format!("Read {} record(s) in {} ms.", scanned.read, scanned.took.as_millis());
        }
        Err(QueueError::Busy(job)) => busy = Some(JobLink::of(job)),
        Err(other) => error = Some(other.to_string()),
    }
    let pages = page.pages();
    let fingerprint = query.fingerprint.as_deref();
    let page = Records {
        base,
        heading,
        queue: format!("{} ({}'s {})", queue.name, queue.worker, queue.which.label()),
        selection: scope,
        sample,
        error,
        busy,
        matched: page.matched,
        page: number,
        pages,
        prev: (number > 1).then(|| records_href(queue, fingerprint, number - 1)),
        next: (number < pages).then(|| records_href(queue, fingerprint, number + 1)),
        partial,
        forms,
        records: page.records,
    };
    render(StatusCode::OK, &page)
}

/// An action's form: the preview's and the run's.
#[derive(Debug, Deserialize)]
struct ActionForm {
    form_token: String,
    action: String,
    /// Absent: every record of the queue.
    fingerprint: Option<String>,
    /// Only this message's records.
    message_id: Option<String>,
    /// Records per second (the console's default when absent).
    rate: Option<u32>,
}

/// An action's request that passed [`admit`].
struct Admitted<'c> {
    /// Who asks.
    session: Session,
    /// Which queue.
    queue: &'c Arc<Queue>,
    /// What to do.
    action: Action,
    /// To which records.
    selection: Selection,
    /// Records per second, within the console's bounds.
    rate: u32,
}

/// The checks every action passes first: a session with its form token, a queue the
/// console shows, an action that exists; the rate is kept within the console's bounds.
fn admit<'c>(
    console: &'c Console,
    headers: &HeaderMap,
    peer: &Peer,
    worker: &str,
    which: &str,
    form: &ActionForm,
) -> Result<Admitted<'c>, Box<Response>> {
    let session = console
        .access
        .authorize(header_text(headers, header::COOKIE), &form.form_token, origin(headers))
        .map_err(|refused| Box::new(refuse(console, headers, peer, refused)))?;
    let queue = console.queue(worker, which).ok_or_else(|| Box::new(not_found(console, headers)))?;
    let action = Action::parse(&form.action).ok_or_else(|| Box::new(not_found(console, headers)))?;
    let selection = Selection {
        fingerprint: form.fingerprint.clone(),
        message_id: form.message_id.clone().filter(|id| !id.is_empty()),
    };
    let rate = form.rate.unwrap_or(console.settings.rate).clamp(1, console.settings.max_rate);
    Ok(Admitted { session, queue, action, selection, rate })
}

fn refuse(console: &Console, headers: &HeaderMap, peer: &Peer, refused: Refused) -> Response {
    tracing::warn!(peer = %self::peer(peer), reason = %refused, "Console action refused.");
    message(console.base(headers, "Refused"), StatusCode::FORBIDDEN, "Refused", refused.to_string())
}

fn scope(selection: &Selection) -> String {
    match (&selection.fingerprint, &selection.message_id) {
        (_, Some(id)) => format!("message {}", h::truncate(id, 200)),
        (None, None) => "every record".to_owned(),
        (Some(f), None) => format!("failure group {}", h::truncate(f, 200)),
    }
}

async fn preview(
    State(console): State<Arc<Console>>,
    Path((worker, which)): Path<(String, String)>,
    connection: Peer,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let Admitted { session, queue, action, selection, rate } =
        match admit(&console, &headers, &connection, &worker, &which, &form) {
            Ok(admitted) => admitted,
            Err(response) => return *response,
        };
    let settings = console.settings;
    let scope = scope(&selection);
    tracing::info!(
        operator = %session.operator, peer = %peer(&connection), action = action.name(), queue = %queue.name,
        selection = %scope, "Console action previewed."
    );
    let base = console.base(&headers, format!("Preview {}", action.name()));
    let found = queue.preview(&console.broker, action, &selection, settings.max_replays, settings.scan_timeout).await;
    let found = match found {
        Ok(found) => found,
        Err(QueueError::Busy(job)) => {
            return message(
                base,
                StatusCode::CONFLICT,
                "Busy",
                format!("An action runs on this queue: {}", JobLink::of(&job).text),
            );
        }
        Err(error) => return message(base, StatusCode::CONFLICT, "Cannot preview", error.to_string()),
    };
    let s = found.summary;
    let count = match action {
        Action::Replay => s.replayed,
        Action::Park => s.parked,
        Action::Purge => s.purged,
    };
    let handled = s.replayed + s.parked + s.purged;
    let page = PreviewPage {
        base,
        action: action.name(),
        verb: match action {
            Action::Replay => "replayed",
            Action::Park => "parked",
            Action::Purge => "purged",
        },
        scope,
        queue: format!("{} ({}'s {})", queue.name, queue.worker, queue.which.label()),
        summary: s,
        partial: found.partial,
        count,
        staying_count: s.elsewhere + s.failed,
        destination: queue.destination(action, settings.max_replays),
        rate,
        max_rate: settings.max_rate,
        estimate: humantime::format_duration(Duration::from_secs(handled.div_ceil(u64::from(rate)))).to_string(),
        planned: found.planned,
        staying: found.staying,
        form_token: session.form_token,
        run: format!("/queues/{}/{}/run", queue.worker, queue.which.slug()),
        back: records_href(queue, selection.fingerprint.as_deref(), 1),
        fingerprint: selection.fingerprint,
        message_id: selection.message_id,
    };
    render(StatusCode::OK, &page)
}

async fn run(
    State(console): State<Arc<Console>>,
    Path((worker, which)): Path<(String, String)>,
    connection: Peer,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let Admitted { session, queue, action, selection, rate } =
        match admit(&console, &headers, &connection, &worker, &which, &form) {
            Ok(admitted) => admitted,
            Err(response) => return *response,
        };
    let settings = console.settings;
    let plan = || Plan {
        action: action.name(),
        queue: queue.name.clone(),
        selection: scope(&selection),
        destination: queue.destination(action, settings.max_replays),
        rate,
        operator: session.operator.clone(),
    };
    let started = queue
        .start(
            &console.broker,
            action,
            &selection,
            Limits { max_replays: settings.max_replays, rate, wait: settings.scan_timeout },
            || console.jobs.add(plan()),
        )
        .await;
    let job = match started {
        Ok(job) => job,
        Err(error) => {
            let base = console.base(&headers, "Not started");
            return message(base, StatusCode::CONFLICT, "Not started", error.to_string());
        }
    };
    tracing::info!(
        job = job.id, operator = %session.operator, peer = %peer(&connection), action = job.plan.action,
        queue = %job.plan.queue, selection = %job.plan.selection, destination = %job.plan.destination, rate,
        "Console action started."
    );
    Redirect::to(&format!("/jobs/{}", job.id)).into_response()
}

async fn job(State(console): State<Arc<Console>>, Path(id): Path<u64>, headers: HeaderMap) -> Response {
    let Some(job) = console.jobs.get(id) else { return not_found(&console, &headers) };
    let state = job.state();
    let (text, class) = match &state.ended {
        None => ("running".to_owned(), "busy"),
        Some(Ok(())) => ("done".to_owned(), ""),
        Some(Err(error)) => (format!("failed: {error}; every batch settled before it stays settled"), "error"),
    };
    let page = JobPage {
        base: console.base(&headers, format!("Action {id}")),
        summary: state.summary,
        running: state.ended.is_none(),
        state: text,
        state_class: class,
        started: pages::when(Some(job.started)),
        elapsed: format!("{:.1} s", job.elapsed()),
        job,
    };
    render(StatusCode::OK, &page)
}

async fn jobs(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let rows = console
        .jobs
        .newest_first()
        .into_iter()
        .map(|job| {
            let state = job.state();
            JobRow {
                href: format!("/jobs/{}", job.id),
                id: job.id,
                what: format!("{} {}", job.plan.action, job.plan.selection),
                queue: job.plan.queue.clone(),
                operator: job.plan.operator.clone(),
                started: pages::when(Some(job.started)),
                state: match state.ended {
                    None => format!("running: {} read", state.summary.read),
                    Some(Ok(())) => format!(
                        "done: {} replayed, {} parked, {} purged",
                        state.summary.replayed, state.summary.parked, state.summary.purged
                    ),
                    Some(Err(error)) => format!("failed: {error}"),
                },
            }
        })
        .collect();
    render(StatusCode::OK, &JobsPage { base: console.base(&headers, "Actions"), rows })
}

async fn sign_in_form(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let base = console.base(&headers, "Sign in");
    if !console.access.writable() {
        return message(base, StatusCode::FORBIDDEN, "Read-only", Refused::ReadOnly.to_string());
    }
    render(StatusCode::OK, &SignIn { base, error: None })
}

#[derive(Debug, Deserialize)]
struct SignInForm {
    token: String,
    #[serde(default)]
    operator: String,
}

async fn sign_in(
    State(console): State<Arc<Console>>,
    connection: Peer,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let _gate = console.sign_in_gate.lock().await;
    match console.access.sign_in(&form.token, &form.operator, origin(&headers)) {
        Ok(session) => {
            tracing::info!(operator = %session.operator, peer = %peer(&connection), "Console operator signed in.");
            let mut response = Redirect::to("/").into_response();
            if let Ok(cookie) = HeaderValue::from_str(&access::set_cookie(&session)) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(refused) => {
            tracing::warn!(peer = %peer(&connection), reason = %refused, "Console sign-in refused.");
            tokio::time::sleep(WRONG_TOKEN_PAUSE).await;
            let base = console.base(&headers, "Sign in");
            render(StatusCode::FORBIDDEN, &SignIn { base, error: Some(refused.to_string()) })
        }
    }
}

#[derive(Debug, Deserialize)]
struct SignOutForm {
    #[serde(default)]
    form_token: String,
}

async fn sign_out(State(console): State<Arc<Console>>, headers: HeaderMap, Form(form): Form<SignOutForm>) -> Response {
    let mut response = Redirect::to("/").into_response();
    // Only the session's own form ends it: another site cannot sign an operator out.
    if console.access.authorize(header_text(&headers, header::COOKIE), &form.form_token, origin(&headers)).is_ok() {
        console.access.sign_out(header_text(&headers, header::COOKIE));
        if let Ok(cookie) = HeaderValue::from_str(&access::clear_cookie()) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
    }
    response
}
