//! Who may change records through the console. Without a token the console is read-only:
//! no action runs whatever a request carries. With one, an operator signs in with it and
//! gets a session: a random id in an `HttpOnly`, `SameSite=Strict` cookie and a random
//! form token that every action must carry back. An action is refused unless its request
//! carries both, and a browser that says the request comes from another site is refused
//! too (its `Origin` or `Sec-Fetch-Site`): a page elsewhere cannot act in the operator's name.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "courier_console";
/// A session lasts this long.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; signing in beyond it ends the oldest.
const MAX_SESSIONS: usize = 64;
/// A token shorter than this is refused at start: it could be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;
/// An operator's name is kept this long.
const MAX_NAME: usize = 64;

/// The console's token and its sessions.
#[derive(Debug)]
pub struct Access {
    /// SHA-256 of the token (`None`: read-only). Compared digest to digest, so how long a
    /// comparison takes says nothing about the token.
    token: Option<[u8; 32]>,
    /// Signed-in sessions, oldest first.
    sessions: Mutex<VecDeque<Session>>,
}

/// One signed-in operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The cookie's value.
    pub id: String,
    /// The value every action's form must carry.
    pub form_token: String,
    /// The name given at sign-in, for the log.
    pub operator: String,
    /// When it ends.
    expires: Instant,
}

/// Why an action was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The console has no token.
    #[error("this console is read-only: it was started without --token")]
    ReadOnly,
    /// No session, or an expired one.
    #[error("sign in first")]
    NoSession,
    /// The form did not carry the session's form token.
    #[error("the form is stale or was not sent by this console: reload the page")]
    FormToken,
    /// The browser says the request comes from another site.
    #[error("refused: the request comes from another site")]
    CrossSite,
    /// A wrong token at sign-in.
    #[error("wrong token")]
    WrongToken,
}

/// What a request says about where it comes from.
#[derive(Clone, Copy, Debug, Default)]
pub struct Origin<'a> {
    /// `Host`.
    pub host: Option<&'a str>,
    /// `Origin`.
    pub origin: Option<&'a str>,
    /// `Sec-Fetch-Site`.
    pub fetch_site: Option<&'a str>,
}

impl Access {
    /// A console with `token` (`None`: read-only); the token must be long enough.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        if let Some(token) = token
            && token.chars().count() < MIN_TOKEN_CHARS
        {
            return Err(format!("--token must have at least {MIN_TOKEN_CHARS} characters"));
        }
        Ok(Self { token: token.map(digest), sessions: Mutex::new(VecDeque::new()) })
    }

    /// Whether actions can run at all.
    pub fn writable(&self) -> bool {
        self.token.is_some()
    }

    /// Sign in with `token` as `operator`.
    pub fn sign_in(&self, token: &str, operator: &str, origin: Origin<'_>) -> Result<Session, Refused> {
        let expected = self.token.ok_or(Refused::ReadOnly)?;
        same_site(origin)?;
        if digest(token) != expected {
            return Err(Refused::WrongToken);
        }
        let session = Session {
            id: random(),
            form_token: random(),
            operator: operator_name(operator),
            expires: Instant::now() + SESSION_TTL,
        };
        let mut sessions = self.lock();
        sessions.retain(|s| s.expires > Instant::now());
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(session.clone());
        Ok(session)
    }

    /// The session a `Cookie` header names, if it is live.
    pub fn session(&self, cookies: Option<&str>) -> Option<Session> {
        let id = cookie(cookies?, COOKIE)?;
        let now = Instant::now();
        self.lock().iter().find(|s| s.id == id && s.expires > now).cloned()
    }

    /// End the session a `Cookie` header names.
    pub fn sign_out(&self, cookies: Option<&str>) {
        if let Some(id) = cookies.and_then(|c| cookie(c, COOKIE)) {
            self.lock().retain(|s| s.id != id);
        }
    }

    /// The session an action runs in: refused without a token, a live session, the
    /// session's form token, or from another site.
    pub fn authorize(&self, cookies: Option<&str>, form_token: &str, origin: Origin<'_>) -> Result<Session, Refused> {
        if !self.writable() {
            return Err(Refused::ReadOnly);
        }
        same_site(origin)?;
        let session = self.session(cookies).ok_or(Refused::NoSession)?;
        if digest(form_token) != digest(&session.form_token) {
            return Err(Refused::FormToken);
        }
        Ok(session)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The `Set-Cookie` value of a session (`Max-Age` its lifetime).
pub fn set_cookie(session: &Session) -> String {
    format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", session.id, SESSION_TTL.as_secs())
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// Refuse what a browser says comes from another site. A request that says nothing (a
/// script's, or an old browser's) still needs the session and its form token.
fn same_site(origin: Origin<'_>) -> Result<(), Refused> {
    if let Some(site) = origin.fetch_site
        && !matches!(site, "same-origin" | "none")
    {
        return Err(Refused::CrossSite);
    }
    if let Some(from) = origin.origin {
        let own = origin.host.is_some_and(|host| from == format!("http://{host}") || from == format!("https://{host}"));
        if !own {
            return Err(Refused::CrossSite);
        }
    }
    Ok(())
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// 256 random bits as hex.
fn random() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// What the log says for an operator: printable characters, at most [`MAX_NAME`].
fn operator_name(given: &str) -> String {
    let name: String = given.chars().filter(|c| !c.is_control()).take(MAX_NAME).collect();
    let name = name.trim();
    if name.is_empty() { "unnamed".to_owned() } else { name.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "correct horse battery staple";
    const HERE: Origin<'static> = Origin { host: Some("127.0.0.1:9470"), origin: None, fetch_site: None };

    #[test]
    fn without_a_token_nothing_can_act() {
        let access = Access::new(None).expect("read-only");
        assert!(!access.writable());
        assert_eq!(access.sign_in("", "me", HERE), Err(Refused::ReadOnly));
        assert_eq!(access.authorize(Some("courier_console=x"), "y", HERE), Err(Refused::ReadOnly));
        assert!(Access::new(Some("short")).is_err());
    }

    #[test]
    fn an_action_needs_the_session_and_its_form_token() {
        let access = Access::new(Some(TOKEN)).expect("a token");
        assert_eq!(access.sign_in("wrong token, long enough", "me", HERE), Err(Refused::WrongToken));
        let session = access.sign_in(TOKEN, "ops\u{7}\nalice", HERE).expect("signed in");
        assert_eq!(session.operator, "opsalice");
        let cookies = format!("theme=dark; {COOKIE}={}", session.id);
        assert_eq!(access.authorize(Some(&cookies), &session.form_token, HERE), Ok(session.clone()));
        assert_eq!(access.authorize(Some(&cookies), "forged", HERE), Err(Refused::FormToken));
        assert_eq!(access.authorize(None, &session.form_token, HERE), Err(Refused::NoSession));
        assert_eq!(access.authorize(Some("courier_console=guess"), &session.form_token, HERE), Err(Refused::NoSession));
        access.sign_out(Some(&cookies));
        assert_eq!(access.authorize(Some(&cookies), &session.form_token, HERE), Err(Refused::NoSession));
        assert!(set_cookie(&session).contains("HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn requests_from_another_site_are_refused() {
        let access = Access::new(Some(TOKEN)).expect("a token");
        let session = access.sign_in(TOKEN, "me", HERE).expect("signed in");
        let cookies = format!("{COOKIE}={}", session.id);
        let act = |origin| access.authorize(Some(&cookies), &session.form_token, origin);
        assert!(act(Origin { origin: Some("http://127.0.0.1:9470"), fetch_site: Some("same-origin"), ..HERE }).is_ok());
        assert_eq!(act(Origin { origin: Some("http://evil.example"), ..HERE }), Err(Refused::CrossSite));
        assert_eq!(act(Origin { fetch_site: Some("cross-site"), ..HERE }), Err(Refused::CrossSite));
        assert_eq!(act(Origin { fetch_site: Some("same-site"), ..HERE }), Err(Refused::CrossSite));
        assert_eq!(act(Origin { host: None, origin: Some("null"), fetch_site: None }), Err(Refused::CrossSite));
        assert_eq!(
            access.sign_in(TOKEN, "me", Origin { origin: Some("http://evil.example"), ..HERE }),
            Err(Refused::CrossSite)
        );
    }

    #[test]
    fn sessions_are_capped_oldest_out() {
        let access = Access::new(Some(TOKEN)).expect("a token");
        let first = access.sign_in(TOKEN, "", HERE).expect("signed in");
        assert_eq!(first.operator, "unnamed");
        for _ in 0..MAX_SESSIONS {
            access.sign_in(TOKEN, "", HERE).expect("signed in");
        }
        assert_eq!(access.session(Some(&format!("{COOKIE}={}", first.id))), None);
        assert_eq!(access.lock().len(), MAX_SESSIONS);
    }
}
