//! The WorkOS Directory Sync adapter: [`DirectoryApi`], [`DirectoryList`] and [`EventsApi`] over
//! HTTPS with reqwest (rustls).
//!
//! What it does on every request (workos-api.md §3, §6, §7):
//! - counts the request in the caller's [`CallBudget`] and never waits past its deadline (minus a
//!   safety margin kept for the caller); each request's timeout also ends before it;
//! - retries 429 (honouring `Retry-After`, seconds or HTTP-date), 5xx, timeouts and connection
//!   errors, with full-jitter exponential back-off when no `Retry-After` is given;
//! - paces `/directory_users` per directory (WorkOS allows 4 requests/s per directory);
//! - walks every page of a list (`limit=100`, following `list_metadata.after`).
//!
//! Logs carry the method, route template, status, `X-Request-ID` and attempt only: never the API
//! key, ids, e-mails or bodies. Bodies are parsed into types holding only ids, `state` and `name`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, USER_AGENT};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::clock::{Clock, EpochMillis};
use crate::directory::{
    ApiError, CallBudget, DirGroup, DirInfo, DirUser, DirectoryApi, DirectoryList, Listing, Page, UserState,
};
use crate::event::parse_created_at;
use crate::model::{email_hash, idp_hash};
use crate::ports::budget::{RateBudget, Unlimited};
use crate::ports::events::{EventsApi, EventsCursor, RawEvent};
use crate::secrets::{CachedSecret, Refresh, DEFAULT_REFRESH_INTERVAL};

/// `limit` sent on every list request (WorkOS's maximum).
pub const PAGE_LIMIT: u32 = 100;
/// A list that has not ended after this many pages is treated as a bad response.
pub const MAX_PAGES: u32 = 10_000;
/// Longest error message kept from a WorkOS error body.
const MAX_MESSAGE_CHARS: usize = 300;
/// Pacing entries are pruned once the map holds more directories than this.
const PACING_PRUNE_AT: usize = 1024;

/// How to reach WorkOS and how hard to try. `Debug` never shows the API key.
#[derive(Clone)]
pub struct WorkosConfig {
    /// `https://api.workos.com` by default; may carry a path prefix.
    pub base_url: String,
    pub api_key: String,
    /// Whole-request timeout (connect to end of body) for one attempt.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts per request, the first included (0 counts as 1).
    pub max_attempts: u32,
    /// Back-off cap for the first retry; doubles per retry up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Minimum spacing of `/directory_users` requests for one directory. WorkOS allows 4 req/s;
    /// 260 ms keeps a little margin for clock and network jitter (Node's SDK waits 350 ms).
    pub directory_users_min_interval: Duration,
    /// Time before `budget.deadline` that no wait or request may cross (left for the caller).
    pub deadline_margin: Duration,
    /// `limit` of list requests (WorkOS's maximum, 100; smaller only to exercise paging).
    pub page_limit: u32,
}

impl WorkosConfig {
    pub const DEFAULT_BASE_URL: &'static str = "https://api.workos.com";

    /// The defaults with this key.
    pub fn new(api_key: impl Into<String>) -> Self {
        WorkosConfig {
            api_key: api_key.into(),
            ..Default::default()
        }
    }
}

impl Default for WorkosConfig {
    fn default() -> Self {
        WorkosConfig {
            base_url: Self::DEFAULT_BASE_URL.to_string(),
            api_key: String::new(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 4,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            directory_users_min_interval: Duration::from_millis(260),
            deadline_margin: Duration::from_millis(1500),
            page_limit: PAGE_LIMIT,
        }
    }
}

impl fmt::Debug for WorkosConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkosConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("base_backoff", &self.base_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("directory_users_min_interval", &self.directory_users_min_interval)
            .field("deadline_margin", &self.deadline_margin)
            .field("page_limit", &self.page_limit)
            .finish()
    }
}

/// Why a [`WorkosClient`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkosClientError {
    #[error("invalid WorkOS base URL: {0}")]
    InvalidBaseUrl(String),
    #[error("the WorkOS API key is empty or not a valid header value")]
    InvalidApiKey,
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// One WorkOS route: its template (for logs), path segment, and whether it is paced.
#[derive(Debug, Clone, Copy)]
struct Route {
    template: &'static str,
    collection: &'static str,
    paced: bool,
}

const LIST_USERS: Route = Route {
    template: "GET /directory_users",
    collection: "directory_users",
    paced: true,
};
const GET_USER: Route = Route {
    template: "GET /directory_users/{id}",
    collection: "directory_users",
    paced: true,
};
const LIST_GROUPS: Route = Route {
    template: "GET /directory_groups",
    collection: "directory_groups",
    paced: false,
};
const GET_GROUP: Route = Route {
    template: "GET /directory_groups/{id}",
    collection: "directory_groups",
    paced: false,
};
const GET_DIRECTORY: Route = Route {
    template: "GET /directories/{id}",
    collection: "directories",
    paced: false,
};
const LIST_DIRECTORIES: Route = Route {
    template: "GET /directories",
    collection: "directories",
    paced: false,
};
const LIST_EVENTS: Route = Route {
    template: "GET /events",
    collection: "events",
    paced: false,
};

/// The WorkOS Directory Sync client. Cheap to clone; clones share the HTTP pool and pacing.
#[derive(Clone)]
pub struct WorkosClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    config: WorkosConfig,
    clock: Arc<dyn Clock>,
    /// The per-key budget shared with every other process using the key.
    budget: Arc<dyn KeyBudget>,
    /// The API key, when it comes from a secret that can rotate (else it is a default header).
    key: Option<Arc<CachedSecret>>,
    /// Per directory: the earliest instant the next `/directory_users` request may be sent.
    pacing: Mutex<HashMap<String, EpochMillis>>,
}

impl fmt::Debug for WorkosClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkosClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    /// Final: a body (`Some`), a 404 read as absent (`None`), or an error not worth retrying.
    Done(Result<Option<Vec<u8>>, ApiError>),
    /// Worth another attempt after `wait` (`None`: use back-off).
    Retry { error: ApiError, wait: Option<Duration> },
}

/// Object-safe face of [`RateBudget`], so the client is not generic over it.
trait KeyBudget: Send + Sync {
    fn take<'a>(
        &'a self,
        now: EpochMillis,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<EpochMillis>> + Send + 'a>>;
}

struct Budgeted<B>(B);

impl<B: RateBudget> KeyBudget for Budgeted<B> {
    fn take<'a>(
        &'a self,
        now: EpochMillis,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<EpochMillis>> + Send + 'a>> {
        Box::pin(async move {
            match self.0.take(now).await {
                Ok(wait) => wait,
                Err(e) => {
                    // The budget's store is down: go on with local pacing only, loudly.
                    tracing::warn!(error = %e, "shared WorkOS budget unavailable; pacing locally only");
                    None
                }
            }
        })
    }
}

/// `Bearer <key>`, marked sensitive so it is never printed; `None` for an empty or invalid key.
fn bearer(key: &str) -> Option<HeaderValue> {
    let key = key.trim();
    if key.is_empty() {
        return None;
    }
    let mut v = HeaderValue::from_str(&format!("Bearer {key}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl WorkosClient {
    /// Build the one HTTP client (rustls, bearer auth, timeouts). Fails on a bad URL or key.
    pub fn new(config: WorkosConfig, clock: impl Clock) -> Result<Self, WorkosClientError> {
        Self::with_budget(config, clock, Unlimited)
    }

    /// The same, taking every request from a budget shared by all processes using the key.
    pub fn with_budget(
        config: WorkosConfig,
        clock: impl Clock,
        budget: impl RateBudget,
    ) -> Result<Self, WorkosClientError> {
        Self::build(config, clock, budget, None)
    }

    /// With the API key read from a [`CachedSecret`] on every request: when WorkOS answers 401,
    /// the secret is re-read (at most once a minute) and the request tried once more with the new
    /// key, so a rotated key is picked up without a restart.
    pub fn with_key(
        config: WorkosConfig,
        clock: impl Clock,
        budget: impl RateBudget,
        key: Arc<CachedSecret>,
    ) -> Result<Self, WorkosClientError> {
        Self::build(config, clock, budget, Some(key))
    }

    fn build(
        config: WorkosConfig,
        clock: impl Clock,
        budget: impl RateBudget,
        key: Option<Arc<CachedSecret>>,
    ) -> Result<Self, WorkosClientError> {
        let base = Url::parse(config.base_url.trim()).map_err(|e| WorkosClientError::InvalidBaseUrl(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(WorkosClientError::InvalidBaseUrl(format!(
                "scheme must be http or https, got {}",
                base.scheme()
            )));
        }
        let mut headers = HeaderMap::new();
        match &key {
            Some(k) => {
                bearer(k.value().expose()).ok_or(WorkosClientError::InvalidApiKey)?;
            }
            None => {
                headers.insert(
                    AUTHORIZATION,
                    bearer(&config.api_key).ok_or(WorkosClientError::InvalidApiKey)?,
                );
            }
        }
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("dsync/", env!("CARGO_PKG_VERSION"))),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WorkosClientError::Http(e.to_string()))?;
        Ok(WorkosClient {
            inner: Arc::new(Inner {
                http,
                base,
                config,
                clock: Arc::new(clock),
                budget: Arc::new(Budgeted(budget)),
                key,
                pacing: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &WorkosConfig {
        &self.inner.config
    }

    /// `base/<collection>[/<id>]`, the id percent-encoded as one path segment.
    fn url(&self, route: Route, id: Option<&str>) -> Result<Url, ApiError> {
        let mut url = self.inner.base.clone();
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|()| ApiError::Transport("base URL cannot carry a path".into()))?;
            segs.pop_if_empty().push(route.collection);
            if let Some(id) = id {
                segs.push(id);
            }
        }
        Ok(url)
    }

    /// Reserve the next `/directory_users` slot for `directory` if it starts before `limit`.
    fn reserve_slot(&self, directory: &str, now: EpochMillis, limit: EpochMillis) -> Option<EpochMillis> {
        let mut map = lock(&self.inner.pacing);
        if map.len() > PACING_PRUNE_AT {
            map.retain(|_, next| *next > now);
        }
        let slot = map.get(directory).copied().unwrap_or(now).max(now);
        if slot >= limit {
            return None;
        }
        map.insert(
            directory.to_owned(),
            slot.saturating_add(self.inner.config.directory_users_min_interval),
        );
        Some(slot)
    }

    /// Push `directory`'s next slot to at least `at` (a request sent then, or a `Retry-After`).
    fn push_slot(&self, directory: &str, at: EpochMillis) {
        let mut map = lock(&self.inner.pacing);
        let next = map.entry(directory.to_owned()).or_insert(at);
        *next = (*next).max(at);
    }

    /// One logical request with pacing, retries and the deadline; `Ok(None)` only on an allowed 404.
    async fn fetch(
        &self,
        route: Route,
        url: Url,
        query: &[(&str, &str)],
        directory: &str,
        none_on_404: bool,
        budget: &CallBudget,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let cfg = &self.inner.config;
        let clock = &self.inner.clock;
        let hard = budget.deadline.saturating_sub(cfg.deadline_margin);
        // One more when the key can rotate: the retry with a re-read key.
        let max_attempts = cfg.max_attempts.max(1) + u32::from(self.inner.key.is_some());
        let mut last: Option<ApiError> = None;
        let mut key_refreshed = false;
        let give_up = |last: Option<ApiError>| Err(last.unwrap_or(ApiError::DeadlineExceeded));

        for attempt in 1..=max_attempts {
            let now = clock.now();
            if now >= hard {
                return give_up(last);
            }
            if route.paced {
                let Some(slot) = self.reserve_slot(directory, now, hard) else {
                    tracing::warn!(
                        method = "GET",
                        route = route.template,
                        attempt,
                        "pacing would pass the deadline"
                    );
                    return give_up(last);
                };
                if slot > now {
                    tokio::time::sleep(slot.remaining_from(now)).await;
                }
            }
            let now = clock.now();
            let remaining = hard.remaining_from(now);
            if remaining.is_zero() {
                return give_up(last);
            }
            if route.paced {
                // +1 ms: the clock truncates to milliseconds, so the real send may be up to 1 ms later.
                self.push_slot(
                    directory,
                    now.saturating_add(cfg.directory_users_min_interval + Duration::from_millis(1)),
                );
            }
            // The key's shared budget (every process using the key draws from it).
            loop {
                let now = clock.now();
                match self.inner.budget.take(now).await {
                    None => break,
                    Some(at) if at < hard => tokio::time::sleep(at.remaining_from(now)).await,
                    Some(_) => return give_up(last),
                }
            }
            let remaining = hard.remaining_from(clock.now());
            if remaining.is_zero() {
                return give_up(last);
            }
            let timeout = cfg.request_timeout.min(remaining);
            let key_version = self.inner.key.as_ref().map(|k| k.version());
            budget.record_call();
            let outcome = self
                .attempt(route, url.clone(), query, none_on_404, timeout, attempt)
                .await;
            let (error, wait) = match outcome {
                Attempt::Done(Err(ApiError::Auth { status: 401 }))
                    if !key_refreshed && self.key_rotated(key_version).await =>
                {
                    // The key was rotated: once more with the new one.
                    key_refreshed = true;
                    last = Some(ApiError::Auth { status: 401 });
                    continue;
                }
                Attempt::Done(result) => return result,
                Attempt::Retry { error, wait } => (error, wait),
            };
            if matches!(error, ApiError::RateLimited { .. }) {
                budget.record_throttled();
            }
            if attempt >= max_attempts {
                tracing::warn!(
                    method = "GET",
                    route = route.template,
                    attempt,
                    "giving up: attempts exhausted"
                );
                return Err(error);
            }
            let now = clock.now();
            if route.paced {
                if let Some(w) = wait {
                    // WorkOS asked this directory to slow down: every request for it waits.
                    self.push_slot(directory, now.saturating_add(w));
                }
            }
            let wait = wait.unwrap_or_else(|| backoff(attempt, cfg.base_backoff, cfg.max_backoff));
            if now.saturating_add(wait) >= hard {
                tracing::warn!(
                    method = "GET",
                    route = route.template,
                    attempt,
                    wait_ms = millis(wait),
                    "giving up: the next attempt would pass the deadline"
                );
                return Err(error);
            }
            tracing::debug!(
                method = "GET",
                route = route.template,
                attempt,
                wait_ms = millis(wait),
                "retrying"
            );
            tokio::time::sleep(wait).await;
            last = Some(error);
        }
        give_up(last)
    }

    /// After a 401: was the key replaced since `used` (re-reading it if due)?
    async fn key_rotated(&self, used: Option<u64>) -> bool {
        let (Some(k), Some(used)) = (&self.inner.key, used) else {
            return false;
        };
        match k.refresh_if_older_than(DEFAULT_REFRESH_INTERVAL).await {
            Ok(Refresh::Changed) => true,
            Ok(_) => k.version() > used,
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read the WorkOS API key");
                false
            }
        }
    }

    /// Send once and classify the answer.
    async fn attempt(
        &self,
        route: Route,
        url: Url,
        query: &[(&str, &str)],
        none_on_404: bool,
        timeout: Duration,
        attempt: u32,
    ) -> Attempt {
        let mut req = self.inner.http.get(url).query(query).timeout(timeout);
        if let Some(k) = &self.inner.key {
            match bearer(k.value().expose()) {
                Some(v) => req = req.header(AUTHORIZATION, v),
                None => return Attempt::Done(Err(ApiError::Auth { status: 401 })),
            }
        }
        let sent = req.send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return transport_failure(route, &e, attempt),
        };
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, self.inner.clock.now()));
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return transport_failure(route, &e, attempt),
        };
        let rid = request_id.as_deref().unwrap_or("-");
        let code = status.as_u16();
        tracing::debug!(
            method = "GET",
            route = route.template,
            status = code,
            request_id = rid,
            attempt,
            "WorkOS answered"
        );

        if status.is_success() {
            return Attempt::Done(Ok(Some(body.to_vec())));
        }
        if status == StatusCode::NOT_FOUND && none_on_404 {
            return Attempt::Done(Ok(None));
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(
                method = "GET",
                route = route.template,
                status = code,
                request_id = rid,
                attempt,
                retry_after_ms = retry_after.map(millis),
                "rate limited"
            );
            return Attempt::Retry {
                error: ApiError::RateLimited { retry_after },
                wait: retry_after,
            };
        }
        if status.is_server_error() {
            tracing::warn!(
                method = "GET",
                route = route.template,
                status = code,
                request_id = rid,
                attempt,
                "WorkOS server error"
            );
            return Attempt::Retry {
                error: ApiError::Server {
                    status: code,
                    request_id,
                },
                wait: retry_after,
            };
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            tracing::error!(
                method = "GET",
                route = route.template,
                status = code,
                request_id = rid,
                attempt,
                "WorkOS refused the API key"
            );
            return Attempt::Done(Err(ApiError::Auth { status: code }));
        }
        tracing::warn!(
            method = "GET",
            route = route.template,
            status = code,
            request_id = rid,
            attempt,
            "WorkOS rejected the request"
        );
        if status.is_client_error() {
            let message =
                error_message(&body).unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            return Attempt::Done(Err(ApiError::Client { status: code, message }));
        }
        // 1xx/3xx (redirects are not followed).
        Attempt::Done(Err(ApiError::BadResponse(format!(
            "unexpected status {code} from {} (request id {rid})",
            route.template
        ))))
    }

    /// `GET` one object; `None` on 404.
    async fn get_one<W: DeserializeOwned>(
        &self,
        route: Route,
        directory: &str,
        id: &str,
        budget: &CallBudget,
    ) -> Result<Option<W>, ApiError> {
        if id.is_empty() || id == "." || id == ".." {
            // Not an id WorkOS could have issued; asking would hit another route.
            tracing::warn!(route = route.template, "refusing to look up an empty or dot id");
            return Ok(None);
        }
        let url = self.url(route, Some(id))?;
        match self.fetch(route, url, &[], directory, true, budget).await? {
            None => Ok(None),
            Some(body) => parse_body(route, &body).map(Some),
        }
    }

    /// One page of a list filtered by `filter`, after `after`; `None` on 404 (the filter's
    /// object is gone).
    async fn page<W: DeserializeOwned>(
        &self,
        route: Route,
        directory: &str,
        filter: (&str, &str),
        after: Option<&str>,
        budget: &CallBudget,
    ) -> Result<Option<Page<W>>, ApiError> {
        let url = self.url(route, None)?;
        let limit = self.inner.config.page_limit.clamp(1, PAGE_LIMIT).to_string();
        let mut query: Vec<(&str, &str)> = vec![filter, ("limit", &limit)];
        if let Some(cursor) = after {
            query.push(("after", cursor));
        }
        let Some(body) = self.fetch(route, url, &query, directory, true, budget).await? else {
            return Ok(None);
        };
        let page: ListPage<W> = parse_body(route, &body)?;
        if page.list_metadata.after.as_deref().is_some_and(|a| Some(a) == after) {
            return Err(ApiError::BadResponse(format!(
                "{} returned the cursor it was given",
                route.template
            )));
        }
        Ok(Some(Page {
            items: page.data,
            after: page.list_metadata.after,
        }))
    }

    /// Every page of a list filtered by `filter`; `None` on 404.
    async fn list_all<W: DeserializeOwned>(
        &self,
        route: Route,
        directory: &str,
        filter: (&str, &str),
        budget: &CallBudget,
    ) -> Result<Option<Vec<W>>, ApiError> {
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        let mut after: Option<String> = None;
        for _page in 0..MAX_PAGES {
            let Some(page) = self.page(route, directory, filter, after.as_deref(), budget).await? else {
                return Ok(None);
            };
            items.extend(page.items);
            match page.after {
                None => return Ok(Some(items)),
                Some(cursor) => {
                    if !seen.insert(cursor.clone()) {
                        return Err(ApiError::BadResponse(format!(
                            "{} returned a cursor it had already returned",
                            route.template
                        )));
                    }
                    after = Some(cursor);
                }
            }
        }
        Err(ApiError::BadResponse(format!(
            "{} did not end within {MAX_PAGES} pages",
            route.template
        )))
    }
}

impl WorkosClient {
    /// One page of an unfiltered list (`query` besides `limit`), with the repeating-cursor check.
    async fn plain_page<W: DeserializeOwned>(
        &self,
        route: Route,
        query: &[(&str, &str)],
        after: Option<&str>,
        budget: &CallBudget,
    ) -> Result<Page<W>, ApiError> {
        let url = self.url(route, None)?;
        // A 404 on a list is an error here (no filter object that could be gone).
        let body = self
            .fetch(route, url, query, "", false, budget)
            .await?
            .ok_or_else(|| ApiError::BadResponse(format!("{} answered 404", route.template)))?;
        let page: ListPage<W> = parse_body(route, &body)?;
        if after.is_some() && page.list_metadata.after.as_deref() == after {
            return Err(ApiError::BadResponse(format!(
                "{} returned the cursor it was given",
                route.template
            )));
        }
        Ok(Page {
            items: page.data,
            after: page.list_metadata.after,
        })
    }
}

fn transport_failure(route: Route, e: &reqwest::Error, attempt: u32) -> Attempt {
    let error = if e.is_timeout() {
        ApiError::Timeout
    } else {
        ApiError::Transport(describe(e))
    };
    tracing::warn!(method = "GET", route = route.template, attempt, error = %error, "request failed");
    if e.is_builder() || e.is_redirect() {
        Attempt::Done(Err(error))
    } else {
        Attempt::Retry { error, wait: None }
    }
}

/// The error and its causes, without the URL (it carries ids).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_body() || e.is_decode() {
        "reading the response failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Decode a JSON body; the error names the route and serde's error category/position only.
fn parse_body<W: DeserializeOwned>(route: Route, body: &[u8]) -> Result<W, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadResponse(format!(
            "malformed body from {} ({:?} error at line {} column {})",
            route.template,
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}

#[derive(Deserialize)]
struct ListPage<W> {
    data: Vec<W>,
    list_metadata: ListMetadata,
}

#[derive(Deserialize)]
struct ListMetadata {
    #[serde(default)]
    after: Option<String>,
}

/// Only what [`DirUser`] keeps; every other field (names, attributes) is skipped unread. The
/// e-mail and the IdP id are turned into their hashes at once and never kept.
#[derive(Deserialize)]
struct WireUser {
    id: String,
    directory_id: String,
    state: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    emails: Vec<WireEmail>,
    #[serde(default)]
    idp_id: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

#[derive(Deserialize)]
struct WireEmail {
    #[serde(default)]
    primary: Option<bool>,
    #[serde(default)]
    value: Option<String>,
}

impl From<WireUser> for DirUser {
    fn from(w: WireUser) -> Self {
        // `email` (current) or the primary of the deprecated `emails`, else its first.
        let email = w.email.filter(|e| !e.trim().is_empty()).or_else(|| {
            let primary = w
                .emails
                .iter()
                .find(|e| e.primary == Some(true))
                .and_then(|e| e.value.clone());
            primary.or_else(|| w.emails.into_iter().find_map(|e| e.value))
        });
        DirUser {
            id: w.id,
            directory_id: w.directory_id,
            state: UserState::parse(&w.state),
            email_hash: email.as_deref().filter(|e| !e.trim().is_empty()).map(email_hash),
            idp_hash: w.idp_id.as_deref().filter(|i| !i.trim().is_empty()).map(idp_hash),
            updated_at: w.updated_at.as_deref().and_then(parse_created_at),
        }
    }
}

#[derive(Deserialize)]
struct WireDirectory {
    id: String,
    #[serde(default)]
    organization_id: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

impl From<WireDirectory> for DirInfo {
    fn from(d: WireDirectory) -> Self {
        DirInfo {
            id: d.id,
            organization_id: d.organization_id.filter(|o| !o.is_empty()),
            state: d.state.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct WireGroup {
    id: String,
    directory_id: String,
    name: String,
    #[serde(default)]
    updated_at: Option<String>,
}

impl From<WireGroup> for DirGroup {
    fn from(w: WireGroup) -> Self {
        DirGroup {
            id: w.id,
            directory_id: w.directory_id,
            name: w.name,
            updated_at: w.updated_at.as_deref().and_then(parse_created_at),
        }
    }
}

/// The message of a WorkOS error body: `{"message"[,"code"]}`, `{"error_description"}`,
/// `{"error"}`, or a bare JSON string such as `"Ratelimited"`. Truncated; `None` if absent.
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |key: &str| v.get(key).and_then(|m| m.as_str()).filter(|s| !s.trim().is_empty());
    let msg = match &v {
        serde_json::Value::String(s) if !s.trim().is_empty() => s.clone(),
        serde_json::Value::Object(_) => {
            if let Some(m) = text("message") {
                match text("code") {
                    Some(code) => format!("{m} ({code})"),
                    None => m.to_owned(),
                }
            } else {
                text("error_description").or_else(|| text("error"))?.to_owned()
            }
        }
        _ => return None,
    };
    Some(msg.chars().take(MAX_MESSAGE_CHARS).collect())
}

/// `Retry-After` as delta-seconds (integer or fractional) or an HTTP-date; a past date is zero.
pub fn parse_retry_after(value: &str, now: EpochMillis) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = v.parse().ok()?;
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at: SystemTime = httpdate::parse_http_date(v).ok()?;
    Some(EpochMillis::from(at).remaining_from(now))
}

/// Full-jitter exponential back-off for retry number `attempt` (1-based): uniform in
/// `0..=min(max, base * 2^(attempt-1))`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    let cap = base.saturating_mul(factor).min(max);
    let cap_ns = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=cap_ns))
}

impl DirectoryApi for WorkosClient {
    async fn get_directory(&self, directory_id: &str, budget: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        let w: Option<WireDirectory> = self.get_one(GET_DIRECTORY, directory_id, directory_id, budget).await?;
        Ok(w.map(DirInfo::from))
    }

    async fn get_user(
        &self,
        directory_id: &str,
        user_id: &str,
        budget: &CallBudget,
    ) -> Result<Option<DirUser>, ApiError> {
        let w: Option<WireUser> = self.get_one(GET_USER, directory_id, user_id, budget).await?;
        Ok(w.map(DirUser::from))
    }

    async fn get_group(
        &self,
        directory_id: &str,
        group_id: &str,
        budget: &CallBudget,
    ) -> Result<Option<DirGroup>, ApiError> {
        let w: Option<WireGroup> = self.get_one(GET_GROUP, directory_id, group_id, budget).await?;
        Ok(w.map(DirGroup::from))
    }

    async fn user_groups(
        &self,
        directory_id: &str,
        user_id: &str,
        budget: &CallBudget,
    ) -> Result<Option<Vec<DirGroup>>, ApiError> {
        let w: Option<Vec<WireGroup>> = self
            .list_all(LIST_GROUPS, directory_id, ("user", user_id), budget)
            .await?;
        Ok(w.map(|w| w.into_iter().map(DirGroup::from).collect()))
    }

    async fn users_page(
        &self,
        directory_id: &str,
        listing: Listing<'_>,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        let filter = match listing {
            Listing::Directory => ("directory", directory_id),
            Listing::Group(g) => ("group", g),
        };
        let page: Option<Page<WireUser>> = self.page(LIST_USERS, directory_id, filter, after, budget).await?;
        Ok(page.map(|p| Page {
            items: p.items.into_iter().map(DirUser::from).collect(),
            after: p.after,
        }))
    }

    async fn groups_page(
        &self,
        directory_id: &str,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> Result<Option<Page<DirGroup>>, ApiError> {
        let page: Option<Page<WireGroup>> = self
            .page(LIST_GROUPS, directory_id, ("directory", directory_id), after, budget)
            .await?;
        Ok(page.map(|p| Page {
            items: p.items.into_iter().map(DirGroup::from).collect(),
            after: p.after,
        }))
    }

    fn pace_next(&self, directory_id: &str) -> Option<EpochMillis> {
        lock(&self.inner.pacing).get(directory_id).copied()
    }

    fn pace_from(&self, directory_id: &str, at: EpochMillis) {
        self.push_slot(directory_id, at);
    }
}

impl DirectoryList for WorkosClient {
    async fn directories_page(&self, after: Option<&str>, budget: &CallBudget) -> Result<Page<DirInfo>, ApiError> {
        let limit = PAGE_LIMIT.to_string();
        let mut query: Vec<(&str, &str)> = vec![("limit", &limit)];
        if let Some(a) = after {
            query.push(("after", a));
        }
        let page: Page<WireDirectory> = self.plain_page(LIST_DIRECTORIES, &query, after, budget).await?;
        Ok(Page {
            items: page.items.into_iter().map(DirInfo::from).collect(),
            after: page.after,
        })
    }
}

impl EventsApi for WorkosClient {
    async fn events_page(
        &self,
        types: &[&str],
        cursor: EventsCursor,
        limit: u32,
        budget: &CallBudget,
    ) -> Result<Page<RawEvent>, ApiError> {
        let events = types.join(",");
        let limit = limit.clamp(1, PAGE_LIMIT).to_string();
        let mut query: Vec<(&str, &str)> = vec![("events", &events), ("limit", &limit)];
        // Never both: WorkOS refuses `range_start` with `after`.
        let start;
        let after = match &cursor {
            EventsCursor::After(id) => {
                query.push(("after", id));
                Some(id.as_str())
            }
            EventsCursor::RangeStart(t) => {
                start = crate::event::format_created_at(*t);
                query.push(("range_start", &start));
                None
            }
        };
        let page: Page<Box<serde_json::value::RawValue>> = self.plain_page(LIST_EVENTS, &query, after, budget).await?;
        let mut items = Vec::with_capacity(page.items.len());
        for raw in page.items {
            match RawEvent::parse(raw.get().to_owned()) {
                Ok(e) => items.push(e),
                // Logged without the event (it may carry names and e-mails).
                Err(e) => {
                    tracing::warn!(route = LIST_EVENTS.template, error = %e, "skipping an event that cannot be read")
                }
            }
        }
        Ok(Page {
            items,
            after: page.after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use std::time::UNIX_EPOCH;

    const NOW: EpochMillis = EpochMillis(1_700_000_000_000);

    #[test]
    fn retry_after_seconds_fractions_and_dates() {
        assert_eq!(parse_retry_after("1", NOW), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 120 ", NOW), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("0", NOW), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5", NOW), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("0.25", NOW), Some(Duration::from_millis(250)));
        let future = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(NOW.0) + Duration::from_secs(30));
        assert_eq!(parse_retry_after(&future, NOW), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(NOW.0) - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, NOW), Some(Duration::ZERO));
        for garbage in [
            "",
            "  ",
            "soon",
            "-1",
            "1e3",
            "NaN",
            "inf",
            ".",
            "1.2.3",
            "Tue, 99 Foo 2023",
        ] {
            assert_eq!(parse_retry_after(garbage, NOW), None, "{garbage:?}");
        }
    }

    #[test]
    fn backoff_stays_within_its_cap() {
        let base = Duration::from_millis(250);
        let max = Duration::from_secs(5);
        for attempt in 1..=12u32 {
            let cap = (base * 2u32.pow(attempt - 1)).min(max);
            for _ in 0..500 {
                assert!(backoff(attempt, base, max) <= cap, "attempt {attempt}");
            }
        }
        for _ in 0..100 {
            assert!(backoff(0, base, max) <= base);
            assert!(backoff(u32::MAX, base, max) <= max);
            assert!(backoff(40, Duration::MAX, max) <= max);
        }
        assert_eq!(backoff(3, Duration::ZERO, max), Duration::ZERO);
        // Jitter: not always the same value.
        let samples: HashSet<Duration> = (0..50).map(|_| backoff(3, base, max)).collect();
        assert!(samples.len() > 1);
    }

    #[test]
    fn error_messages_from_every_body_shape() {
        let m = |s: &str| error_message(s.as_bytes());
        assert_eq!(m(r#"{"message":"Not Found"}"#).as_deref(), Some("Not Found"));
        assert_eq!(
            m(r#"{"message":"Bad events","code":"invalid_events_request"}"#).as_deref(),
            Some("Bad events (invalid_events_request)")
        );
        assert_eq!(
            m(r#"{"message":"Validation failed","errors":[{"field":"directory","code":"x"}]}"#).as_deref(),
            Some("Validation failed")
        );
        assert_eq!(
            m(r#"{"error":"invalid_grant","error_description":"Bad code"}"#).as_deref(),
            Some("Bad code")
        );
        assert_eq!(m(r#"{"error":"boom"}"#).as_deref(), Some("boom"));
        assert_eq!(m(r#""Ratelimited""#).as_deref(), Some("Ratelimited"));
        assert_eq!(m("<html>oops</html>"), None);
        assert_eq!(m(r#"{"other":1}"#), None);
        assert_eq!(m("42"), None);
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(5000));
        assert_eq!(m(&long).map(|s| s.len()), Some(MAX_MESSAGE_CHARS));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let cfg = WorkosConfig::new("sk_live_supersecret");
        assert!(!format!("{cfg:?}").contains("supersecret"));
        let client = WorkosClient::new(cfg, SystemClock).expect("client");
        assert!(!format!("{client:?}").contains("supersecret"));
        assert!(format!("{client:?}").contains("redacted"));
    }

    #[test]
    fn bad_config_is_an_error_not_a_panic() {
        let bad_url = WorkosConfig {
            base_url: "not a url".into(),
            ..WorkosConfig::new("sk")
        };
        assert!(matches!(
            WorkosClient::new(bad_url, SystemClock),
            Err(WorkosClientError::InvalidBaseUrl(_))
        ));
        let ftp = WorkosConfig {
            base_url: "ftp://example.com".into(),
            ..WorkosConfig::new("sk")
        };
        assert!(matches!(
            WorkosClient::new(ftp, SystemClock),
            Err(WorkosClientError::InvalidBaseUrl(_))
        ));
        assert_eq!(
            WorkosClient::new(WorkosConfig::new(""), SystemClock).err(),
            Some(WorkosClientError::InvalidApiKey)
        );
        assert_eq!(
            WorkosClient::new(WorkosConfig::new("sk\nx"), SystemClock).err(),
            Some(WorkosClientError::InvalidApiKey)
        );
    }

    #[test]
    fn ids_are_one_encoded_path_segment() {
        let cfg = WorkosConfig {
            base_url: "https://proxy.example/workos/".into(),
            ..WorkosConfig::new("sk")
        };
        let c = WorkosClient::new(cfg, SystemClock).expect("client");
        let url = c.url(GET_USER, Some("a/b?c#d")).expect("url");
        assert_eq!(
            url.as_str(),
            "https://proxy.example/workos/directory_users/a%2Fb%3Fc%23d"
        );
        let url = c.url(LIST_GROUPS, None).expect("url");
        assert_eq!(url.as_str(), "https://proxy.example/workos/directory_groups");
    }

    #[tokio::test]
    async fn no_call_once_the_deadline_margin_is_reached() {
        let clock = ManualClock::at(NOW);
        let cfg = WorkosConfig {
            base_url: "http://127.0.0.1:9".into(),
            ..WorkosConfig::new("sk")
        };
        let c = WorkosClient::new(cfg, clock.clone()).expect("client");
        for deadline in [
            NOW.saturating_sub(Duration::from_secs(1)),
            NOW,
            NOW.saturating_add(Duration::from_secs(1)),
        ] {
            let budget = CallBudget::until(deadline);
            assert_eq!(c.get_group("d", "g", &budget).await, Err(ApiError::DeadlineExceeded));
            assert_eq!(
                c.users_page("d", Listing::Directory, None, &budget).await,
                Err(ApiError::DeadlineExceeded)
            );
            assert_eq!(budget.calls(), 0);
        }
    }

    /// A one-route HTTP server answering every request with `status`, `headers` and `body`.
    async fn serve(status: u16, headers: Vec<(&'static str, String)>, body: &'static str) -> String {
        use axum::response::IntoResponse;
        let handler = move || {
            let headers = headers.clone();
            async move {
                let mut resp = (StatusCode::from_u16(status).expect("status"), body).into_response();
                for (k, v) in headers {
                    resp.headers_mut().insert(k, HeaderValue::from_str(&v).expect("header"));
                }
                resp
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    fn client(base_url: String) -> WorkosClient {
        let cfg = WorkosConfig {
            base_url,
            base_backoff: Duration::from_millis(10),
            directory_users_min_interval: Duration::from_millis(1),
            deadline_margin: Duration::ZERO,
            ..WorkosConfig::new("sk_test")
        };
        WorkosClient::new(cfg, SystemClock).expect("client")
    }

    fn budget(secs: u64) -> CallBudget {
        CallBudget::until(SystemClock.now().saturating_add(Duration::from_secs(secs)))
    }

    #[tokio::test]
    async fn a_repeating_cursor_stops_the_walk() {
        let base = serve(
            200,
            vec![],
            r#"{"object":"list","data":[],"list_metadata":{"before":null,"after":"x"}}"#,
        )
        .await;
        let b = budget(5);
        let r = client(base).user_groups("d", "u", &b).await;
        assert!(
            matches!(r, Err(ApiError::BadResponse(ref m)) if m.contains("cursor")),
            "{r:?}"
        );
        assert_eq!(b.calls(), 2);
    }

    #[tokio::test]
    async fn malformed_bodies_are_bad_responses_without_their_contents() {
        let base = serve(
            200,
            vec![],
            r#"{"id":"directory_user_1","directory_id":"d","email":"alice@example.com"}"#,
        )
        .await;
        let b = budget(5);
        let r = client(base.clone()).get_user("d", "directory_user_1", &b).await;
        match r {
            Err(ApiError::BadResponse(m)) => assert!(!m.contains("alice"), "{m}"),
            other => panic!("expected BadResponse, got {other:?}"),
        }
        let base = serve(200, vec![], r#"{"state":"alice@example.com"#).await;
        match client(base).get_group("d", "g", &b).await {
            Err(ApiError::BadResponse(m)) => assert!(!m.contains("alice"), "{m}"),
            other => panic!("expected BadResponse, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn only_needed_fields_are_read_and_unknown_ones_ignored() {
        let base = serve(
            200,
            vec![],
            r#"{"object":"directory_user","id":"u1","directory_id":"d1","email":"a@b.c","state":"suspended","custom_attributes":{"x":1}}"#,
        )
        .await;
        let b = budget(5);
        let u = client(base).get_user("d1", "u1", &b).await.expect("ok").expect("some");
        assert_eq!(
            u,
            DirUser {
                id: "u1".into(),
                directory_id: "d1".into(),
                state: UserState::Other("suspended".into()),
                email_hash: Some(email_hash("A@b.c")),
                idp_hash: None,
                updated_at: None,
            }
        );
    }

    #[tokio::test]
    async fn statuses_map_to_errors() {
        let b = budget(5);
        let base = serve(
            404,
            vec![("x-request-id", "req_1".into())],
            r#"{"message":"Not Found"}"#,
        )
        .await;
        assert_eq!(client(base.clone()).get_group("d", "g", &b).await, Ok(None));
        // A 404 on a sub-list means its object is gone, not an error.
        assert_eq!(client(base).user_groups("d", "u", &b).await, Ok(None));
        let base = serve(403, vec![], r#"{"message":"Forbidden"}"#).await;
        assert_eq!(
            client(base).get_group("d", "g", &b).await,
            Err(ApiError::Auth { status: 403 })
        );
        let base = serve(422, vec![], r#"{"message":"Validation failed","errors":[]}"#).await;
        let before = b.calls();
        assert_eq!(
            client(base).users_page("d", Listing::Directory, None, &b).await,
            Err(ApiError::Client {
                status: 422,
                message: "Validation failed".into()
            })
        );
        assert_eq!(b.calls(), before + 1, "4xx is not retried");
    }

    #[tokio::test]
    async fn server_errors_carry_the_request_id_after_all_attempts() {
        let base = serve(502, vec![("x-request-id", "req_abc".into())], "bad gateway").await;
        let b = budget(5);
        assert_eq!(
            client(base).get_group("d", "g", &b).await,
            Err(ApiError::Server {
                status: 502,
                request_id: Some("req_abc".into())
            })
        );
        assert_eq!(b.calls(), 4);
    }

    #[tokio::test]
    async fn a_retry_after_past_the_deadline_returns_the_429_at_once() {
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(60));
        let base = serve(429, vec![("retry-after", date)], r#""Ratelimited""#).await;
        let b = budget(5);
        let started = std::time::Instant::now();
        let r = client(base).users_page("d", Listing::Group("g"), None, &b).await;
        assert!(
            matches!(r, Err(ApiError::RateLimited { retry_after: Some(d) }) if d > Duration::from_secs(50)),
            "{r:?}"
        );
        assert_eq!(b.calls(), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_reported() {
        // Bind then drop a listener: its port refuses connections.
        let addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let b = budget(5);
        let r = client(format!("http://{addr}")).get_group("d", "g", &b).await;
        assert!(matches!(r, Err(ApiError::Transport(_))), "{r:?}");
        assert_eq!(b.calls(), 4);
    }

    /// A server answering `body` to every request and recording each request's path and query.
    async fn serve_recording(body: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let handler = move |uri: axum::http::Uri| {
            let log = log.clone();
            async move {
                lock(&log).push(uri.to_string());
                body
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn events_are_asked_comma_joined_from_a_time_or_after_an_id_never_both() {
        // Odd spacing and key order on purpose: the raw JSON must come back byte for byte.
        const BODY: &str = r#"{"object":"list","data":[ {"object":"event", "id":"event_01","event":"dsync.user.created","data":{"directory_id":"directory_1","id":"u","email":"a@b.c"},"created_at":"2026-01-15T12:00:00.000Z"} ,{"object":"event","event":"dsync.user.updated","data":{}},{"id":"event_03","event":"dsync.deleted","data":{"object":"directory","id":"directory_2"},"created_at":"2026-01-15T12:00:01.000Z"}],"list_metadata":{"after":"event_03"}}"#;
        let (base, seen) = serve_recording(BODY).await;
        let c = client(base);
        let b = budget(5);
        let types = ["dsync.user.created", "dsync.user.updated"];
        let t = EpochMillis(1_768_478_400_000);
        let page = c
            .events_page(&types, EventsCursor::RangeStart(t), 100, &b)
            .await
            .expect("page");
        // The event without an id is skipped; the others keep their exact JSON.
        assert_eq!(
            page.items.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["event_01", "event_03"]
        );
        assert_eq!(
            page.items[0].raw,
            r#"{"object":"event", "id":"event_01","event":"dsync.user.created","data":{"directory_id":"directory_1","id":"u","email":"a@b.c"},"created_at":"2026-01-15T12:00:00.000Z"}"#
        );
        assert_eq!(page.items[0].directory_id.as_deref(), Some("directory_1"));
        assert_eq!(page.items[0].created_at, Some(t));
        assert_eq!(page.items[1].directory_id.as_deref(), Some("directory_2"));
        assert_eq!(page.after.as_deref(), Some("event_03"));
        // Asked after event_03, the server hands the same cursor back: a bad response, not an
        // endless walk.
        let r = c
            .events_page(&types, EventsCursor::After("event_03".into()), 500, &b)
            .await;
        assert!(matches!(r, Err(ApiError::BadResponse(_))), "{r:?}");
        let seen = lock(&seen).clone();
        assert_eq!(
            seen,
            [
                "/events?events=dsync.user.created%2Cdsync.user.updated&limit=100&range_start=2026-01-15T12%3A00%3A00.000Z",
                "/events?events=dsync.user.created%2Cdsync.user.updated&limit=100&after=event_03",
            ]
        );
    }

    #[tokio::test]
    async fn directories_are_listed_with_their_state() {
        const BODY: &str = r#"{"object":"list","data":[{"object":"directory","id":"directory_1","organization_id":"org_1","state":"linked","name":"Acme"},{"object":"directory","id":"directory_2","organization_id":"","state":"deleting"}],"list_metadata":{"before":null,"after":null}}"#;
        let (base, seen) = serve_recording(BODY).await;
        let b = budget(5);
        let page = client(base)
            .directories_page(Some("directory_0"), &b)
            .await
            .expect("page");
        assert_eq!(
            page.items,
            [
                DirInfo {
                    id: "directory_1".into(),
                    organization_id: Some("org_1".into()),
                    state: "linked".into()
                },
                DirInfo {
                    id: "directory_2".into(),
                    organization_id: None,
                    state: "deleting".into()
                }
            ]
        );
        assert_eq!(page.after, None);
        assert_eq!(lock(&seen).clone(), ["/directories?limit=100&after=directory_0"]);
    }
}
