//! The Events API poller (issue 10): WorkOS's `GET /events` read on a schedule, each event's exact
//! JSON put on the events queue as the receiver would, so events whose webhook never arrived are
//! processed all the same. Overlap with webhooks costs nothing: the processor claims each event id
//! once (its claim's `source` says which path brought the event first).
//!
//! One cursor in the state table (`cursor#events`) holds the last event enqueued, and a lease:
//! - a run takes the lease by compare-and-set before reading anything, so two overlapping runs
//!   never read (and enqueue) the same page; the second one stops at once ([`Polled::Busy`]);
//! - after each page is on the queue, the cursor moves to that page's last event, again by
//!   compare-and-set (a run whose lease was taken over stops there: [`PollError::LostCursor`]);
//! - no cursor (first run, or lost): start from `range_start = now - lookback`;
//! - a cursor not saved within the retention window (30 days) means events were lost for good:
//!   every directory gets a reconcile request, and reading starts again from `now - lookback`;
//! - each run is bounded: it stops before its deadline and after `max_pages`, and the next run
//!   goes on from the cursor.
//!
//! WorkOS refuses `range_start` with `after`, so a run starts from one or the other
//! ([`EventsCursor`]), then pages with `after` only.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::clock::{Clock, EpochMillis};
use crate::config::{ConfigError, Env};
use crate::directory::{ApiError, CallBudget, DirectoryList};
use crate::ports::events::{EventsApi, EventsCursor, RawEvent};
use crate::ports::queue::{Outbox, Outgoing, WorkQueueError};
use crate::ports::state::{SavedCursor, StateStore};
use crate::ports::StoreError;
use crate::queue::{
    QueuedEvent, ATTR_BODY_ENCODING, ATTR_DIRECTORY_ID, ATTR_EVENT_ID, ATTR_EVENT_TYPE, ATTR_SOURCE, NO_DIRECTORY_GROUP,
};
use crate::worker::WorkerEnv;

/// The event types the processor handles, and so the ones polled.
pub const POLLED_TYPES: [&str; 10] = [
    "dsync.activated",
    "dsync.deleted",
    "dsync.user.created",
    "dsync.user.updated",
    "dsync.user.deleted",
    "dsync.group.created",
    "dsync.group.updated",
    "dsync.group.deleted",
    "dsync.group.user_added",
    "dsync.group.user_removed",
];

/// The cursor's name in the state table (`pk = cursor#events`).
pub const CURSOR_NAME: &str = "events";
/// The `source` attribute of everything the poller enqueues.
pub const SOURCE: &str = "events-api";

/// Is this an event type the poller enqueues?
pub fn is_polled(event_type: &str) -> bool {
    POLLED_TYPES.contains(&event_type)
}

/// How the poller behaves.
#[derive(Debug, Clone)]
pub struct EventsPollerConfig {
    /// Where a run without a cursor starts: this long ago.
    pub lookback: Duration,
    /// How long WorkOS keeps events: a cursor not saved for this long may have missed some.
    pub retention: Duration,
    /// Most pages one run reads.
    pub max_pages: u32,
    /// Events per page (WorkOS: at most 100).
    pub page_size: u32,
    /// No page starts when less than this is left before the deadline.
    pub reserve: Duration,
    /// How long the run's lease outlives its deadline.
    pub lease_grace: Duration,
    /// When a caught-up cursor's event is about to leave the retention window, reading starts
    /// again from this long before the cursor was last saved.
    pub rewind: Duration,
}

impl Default for EventsPollerConfig {
    fn default() -> Self {
        EventsPollerConfig {
            lookback: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(30 * 86_400),
            max_pages: 50,
            page_size: 100,
            reserve: Duration::from_secs(5),
            lease_grace: Duration::from_secs(10),
            rewind: Duration::from_secs(300),
        }
    }
}

/// Where a run starts, from the saved cursor (see [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No cursor (first run, or it was lost): the last `lookback` of events.
    FirstRun { from: EpochMillis },
    /// After the saved event.
    Resume { after: String },
    /// The cursor was not saved within the retention window, or fell that far behind: events
    /// may be gone for good. Every directory is reconciled and reading starts again from `from`.
    Expired { from: EpochMillis, age: Duration },
    /// Caught up, but the saved event is old enough to leave the retention window soon (no event
    /// for a long time): start from a time instead, shortly before the cursor was last saved.
    Rewind { from: EpochMillis },
}

impl Start {
    /// The first page's cursor.
    pub fn cursor(&self) -> EventsCursor {
        match self {
            Start::FirstRun { from } | Start::Expired { from, .. } | Start::Rewind { from } => {
                EventsCursor::RangeStart(*from)
            }
            Start::Resume { after } => EventsCursor::After(after.clone()),
        }
    }
}

/// Where to start, given the saved cursor and the time.
pub fn decide(saved: Option<&SavedCursor>, now: EpochMillis, cfg: &EventsPollerConfig) -> Start {
    let from = now.saturating_sub(cfg.lookback);
    let Some(c) = saved else {
        return Start::FirstRun { from };
    };
    let Some(after) = c.event_id.clone() else {
        return Start::FirstRun { from };
    };
    let age = now.abs_diff(c.saved_at);
    if c.saved_at.saturating_add(cfg.retention) < now {
        return Start::Expired { from, age };
    }
    if let Some(at) = c.event_at {
        let behind = at.saturating_add(cfg.retention) < now;
        if behind && !c.caught_up {
            // Still reading a backlog older than the retention window: part of it is gone.
            return Start::Expired {
                from,
                age: now.abs_diff(at),
            };
        }
        if c.caught_up && at.saturating_add(cfg.retention / 2) < now {
            return Start::Rewind {
                from: c.saved_at.saturating_sub(cfg.rewind),
            };
        }
    }
    Start::Resume { after }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// Another run holds the cursor's lease: nothing read, nothing enqueued.
    Busy,
    Done(PollReport),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollReport {
    /// How the run started: `first_run`, `resume`, `expired`, `rewind`.
    pub start: &'static str,
    pub pages: u32,
    pub enqueued: u32,
    /// Events of a type the processor does not handle (not enqueued).
    pub skipped: u32,
    /// Reconcile requests sent because the cursor had expired.
    pub reconcile_requests: u32,
    /// The stream was read to its end.
    pub caught_up: bool,
    pub workos_calls: u32,
    /// The cursor at the end of the run.
    pub cursor: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] WorkQueueError),
    #[error("another run took the events cursor over during this run")]
    LostCursor,
}

/// The message the receiver would have enqueued for this event (`source=events-api`).
pub fn outgoing(ev: &RawEvent) -> Outgoing {
    let (body, encoding) = QueuedEvent::encode_body(&ev.raw);
    let mut attributes = vec![
        (ATTR_SOURCE, SOURCE.to_string()),
        (ATTR_EVENT_ID, ev.id.clone()),
        (ATTR_EVENT_TYPE, ev.event_type.clone()),
    ];
    if let Some(d) = &ev.directory_id {
        attributes.push((ATTR_DIRECTORY_ID, d.clone()));
    }
    if let Some(enc) = encoding.attribute() {
        attributes.push((ATTR_BODY_ENCODING, enc.to_string()));
    }
    Outgoing {
        body,
        group: ev
            .directory_id
            .clone()
            .unwrap_or_else(|| NO_DIRECTORY_GROUP.to_string()),
        attributes,
    }
}

/// The poller, generic over its ports.
pub struct EventsPoller<A, S, O, K> {
    api: A,
    store: S,
    outbox: O,
    clock: K,
    cfg: EventsPollerConfig,
}

impl<A, S, O, K> std::fmt::Debug for EventsPoller<A, S, O, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsPoller")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<A, S, O, K> EventsPoller<A, S, O, K>
where
    A: EventsApi + DirectoryList,
    S: StateStore,
    O: Outbox,
    K: Clock,
{
    pub fn new(api: A, store: S, outbox: O, clock: K, cfg: EventsPollerConfig) -> Self {
        EventsPoller {
            api,
            store,
            outbox,
            clock,
            cfg,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// One run, ending before `deadline`: take the cursor's lease, read pages and enqueue their
    /// events, saving the cursor after each page, then release the lease.
    pub async fn run(&self, deadline: EpochMillis) -> Result<Polled, PollError> {
        let saved = self.store.cursor(CURSOR_NAME).await?;
        let now = self.clock.now();
        if let Some(c) = &saved {
            if c.value.owner.is_some() && c.value.lease_until > now {
                tracing::info!(outcome = "busy", "another run holds the events cursor");
                return Ok(Polled::Busy);
            }
        }
        let me = format!("p{:x}{:08x}", now.0, fastrand::u32(..));
        let mut cur = saved.as_ref().map(|c| c.value.clone()).unwrap_or_default();
        cur.owner = Some(me);
        cur.lease_until = deadline.saturating_add(self.cfg.lease_grace);
        let Some(version) = self
            .store
            .put_cursor(CURSOR_NAME, &cur, saved.as_ref().map(|c| c.version))
            .await?
        else {
            tracing::info!(outcome = "busy", "another run took the events cursor first");
            return Ok(Polled::Busy);
        };
        let mut run = Run {
            poller: self,
            cur,
            version,
            budget: CallBudget::until(deadline),
            deadline,
            report: PollReport::default(),
        };
        let result = run.pages(saved.map(|c| c.value)).await;
        let released = run.release(result.is_ok()).await;
        let mut report = run.report;
        report.workos_calls = run.budget.calls();
        report.cursor = run.cur.event_id.clone();
        match result.and(released) {
            Ok(()) => {
                tracing::info!(
                    outcome = "polled",
                    start = report.start,
                    pages = report.pages,
                    enqueued = report.enqueued,
                    skipped = report.skipped,
                    caught_up = report.caught_up,
                    workos_calls = report.workos_calls,
                    "events polled"
                );
                Ok(Polled::Done(report))
            }
            Err(e) => {
                tracing::warn!(
                    outcome = "failed",
                    pages = report.pages,
                    enqueued = report.enqueued,
                    workos_calls = report.workos_calls,
                    error = %e,
                    "events poll failed; the next run goes on from the saved cursor"
                );
                Err(e)
            }
        }
    }
}

/// One run holding the cursor's lease.
struct Run<'p, A, S, O, K> {
    poller: &'p EventsPoller<A, S, O, K>,
    cur: SavedCursor,
    version: u64,
    budget: CallBudget,
    deadline: EpochMillis,
    report: PollReport,
}

impl<A, S, O, K> Run<'_, A, S, O, K>
where
    A: EventsApi + DirectoryList,
    S: StateStore,
    O: Outbox,
    K: Clock,
{
    fn now(&self) -> EpochMillis {
        self.poller.clock.now()
    }

    /// Compare-and-set the cursor; a run whose lease was taken over stops.
    async fn save(&mut self) -> Result<(), PollError> {
        match self
            .poller
            .store
            .put_cursor(CURSOR_NAME, &self.cur, Some(self.version))
            .await?
        {
            Some(v) => {
                self.version = v;
                Ok(())
            }
            None => Err(PollError::LostCursor),
        }
    }

    async fn pages(&mut self, saved: Option<SavedCursor>) -> Result<(), PollError> {
        let cfg = &self.poller.cfg;
        let start = decide(saved.as_ref(), self.now(), cfg);
        self.report.start = match &start {
            Start::FirstRun { .. } => "first_run",
            Start::Resume { .. } => "resume",
            Start::Expired { .. } => "expired",
            Start::Rewind { .. } => "rewind",
        };
        if let Start::Expired { age, .. } = &start {
            let sent = self.reconcile_everything().await?;
            self.report.reconcile_requests = sent;
            tracing::warn!(
                cursor_expired = true,
                cursor_age_s = age.as_secs(),
                reconcile_requests = sent,
                "events cursor older than the retention window: events may be lost; every directory is reconciled"
            );
            // Start again from a time; the next page saved sets the cursor.
            self.cur.event_id = None;
            self.cur.event_at = None;
            self.cur.caught_up = false;
            self.cur.saved_at = self.now();
            self.save().await?;
        }
        let mut position = start.cursor();
        for _ in 0..cfg.max_pages {
            if self.now().saturating_add(cfg.reserve) >= self.deadline {
                break;
            }
            let page = self
                .poller
                .api
                .events_page(&POLLED_TYPES, position.clone(), cfg.page_size, &self.budget)
                .await?;
            let mut messages = Vec::with_capacity(page.items.len());
            for ev in &page.items {
                if is_polled(&ev.event_type) {
                    messages.push(outgoing(ev));
                } else {
                    self.report.skipped += 1;
                    tracing::info!(event_id = %ev.id, event_type = %ev.event_type, "skipping an event type the processor does not handle");
                }
            }
            self.poller.outbox.send_all(&messages).await?;
            self.report.enqueued += messages.len() as u32;
            self.report.pages += 1;
            let end = page.after.is_none() || page.items.is_empty();
            let next = page.items.last().map(|e| e.id.clone()).or(page.after);
            if let Some(last) = page.items.last() {
                self.cur.event_id = Some(last.id.clone());
                self.cur.event_at = last.created_at;
            }
            self.cur.caught_up = end;
            self.report.caught_up = end;
            if !page.items.is_empty() {
                self.cur.saved_at = self.now();
                self.save().await?;
            }
            match next {
                Some(after) if !end => position = EventsCursor::After(after),
                _ => break,
            }
        }
        Ok(())
    }

    /// Release the lease; a run that read the stream to its end also confirms the cursor then.
    async fn release(&mut self, ok: bool) -> Result<(), PollError> {
        if ok && self.report.caught_up {
            self.cur.saved_at = self.now();
        }
        self.cur.owner = None;
        self.cur.lease_until = self.now();
        match self.save().await {
            Err(PollError::LostCursor) if !ok => Ok(()),
            other => other,
        }
    }

    /// A reconcile request for every directory WorkOS lists and every one we hold data for.
    async fn reconcile_everything(&self) -> Result<u32, PollError> {
        let dirs = known_directories(&self.poller.api, &self.poller.store, &self.budget).await?;
        let now = self.now();
        let messages: Vec<Outgoing> = dirs
            .iter()
            .map(|d| request_message(d, crate::plan::request_body(d, now), SOURCE))
            .collect();
        self.poller.outbox.send_all(&messages).await?;
        Ok(messages.len() as u32)
    }
}

/// A request for a directory on the events queue, grouped by the directory.
pub fn request_message(directory_id: &str, body: String, source: &str) -> Outgoing {
    Outgoing {
        body,
        group: directory_id.to_string(),
        attributes: vec![
            (ATTR_SOURCE, source.to_string()),
            (ATTR_DIRECTORY_ID, directory_id.to_string()),
        ],
    }
}

/// Every directory WorkOS lists, and every one the registry holds that is not deleted.
pub async fn known_directories<A: DirectoryList, S: StateStore>(
    api: &A,
    store: &S,
    budget: &CallBudget,
) -> Result<BTreeSet<String>, PollError> {
    let mut dirs = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = api.directories_page(after.as_deref(), budget).await?;
        dirs.extend(page.items.into_iter().map(|d| d.id));
        match page.after {
            Some(a) if Some(&a) != after.as_ref() => after = Some(a),
            _ => break,
        }
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.registered(after.as_deref(), 100).await?;
        dirs.extend(page.items.into_iter().filter(|r| !r.deleted).map(|r| r.directory_id));
        match page.after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    Ok(dirs)
}

// ------------------------------------------------------------------------------------ config

pub const ENV_LOOKBACK_HOURS: &str = "EVENTS_LOOKBACK_HOURS";
pub const ENV_RETENTION_DAYS: &str = "EVENTS_RETENTION_DAYS";
pub const ENV_MAX_PAGES: &str = "EVENTS_MAX_PAGES";

/// Everything the events poller's `main` needs.
#[derive(Debug, Clone)]
pub struct EventsPollerEnv {
    pub worker: WorkerEnv,
    pub config: EventsPollerConfig,
}

impl EventsPollerEnv {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let worker = WorkerEnv::from_env(env)?;
        let lookback_hours: u64 = env.parsed_or(ENV_LOOKBACK_HOURS, 24)?;
        let retention_days: u64 = env.parsed_or(ENV_RETENTION_DAYS, 30)?;
        if !(1..=90).contains(&retention_days) {
            return Err(ConfigError::Invalid {
                name: ENV_RETENTION_DAYS,
                why: "must be 1 to 90 days (WorkOS keeps events 30 days)".into(),
            });
        }
        if lookback_hours < 1 || lookback_hours > retention_days * 24 {
            return Err(ConfigError::Invalid {
                name: ENV_LOOKBACK_HOURS,
                why: format!("must be 1 to {} hours (the retention window)", retention_days * 24),
            });
        }
        let max_pages: u32 = env.parsed_or(ENV_MAX_PAGES, 50)?;
        if !(1..=1000).contains(&max_pages) {
            return Err(ConfigError::Invalid {
                name: ENV_MAX_PAGES,
                why: "must be 1 to 1000".into(),
            });
        }
        let config = EventsPollerConfig {
            lookback: Duration::from_secs(lookback_hours * 3600),
            retention: Duration::from_secs(retention_days * 86_400),
            max_pages,
            ..EventsPollerConfig::default()
        };
        Ok(EventsPollerEnv { worker, config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::{ENV_KEY_RATE_PER_MINUTE, ENV_QUEUE_URL, ENV_STATE_TABLE};
    use std::collections::HashMap;

    const NOW: EpochMillis = EpochMillis(1_800_000_000_000);
    const MIN: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);

    fn saved(event_at: EpochMillis, saved_at: EpochMillis, caught_up: bool) -> SavedCursor {
        SavedCursor {
            event_id: Some("event_9".into()),
            event_at: Some(event_at),
            saved_at,
            caught_up,
            ..Default::default()
        }
    }

    #[test]
    fn first_run_and_lost_cursor_start_from_the_lookback() {
        let cfg = EventsPollerConfig::default();
        let from = NOW.saturating_sub(Duration::from_secs(24 * 3600));
        assert_eq!(decide(None, NOW, &cfg), Start::FirstRun { from });
        // A cursor item with no event yet (a lease only, or reset after an expiry).
        assert_eq!(
            decide(Some(&SavedCursor::default()), NOW, &cfg),
            Start::FirstRun { from }
        );
        assert_eq!(decide(None, NOW, &cfg).cursor(), EventsCursor::RangeStart(from));
    }

    #[test]
    fn a_recent_cursor_resumes_after_its_event() {
        let cfg = EventsPollerConfig::default();
        let c = saved(NOW.saturating_sub(3 * DAY), NOW.saturating_sub(MIN), false);
        let start = decide(Some(&c), NOW, &cfg);
        assert_eq!(
            start,
            Start::Resume {
                after: "event_9".into()
            }
        );
        assert_eq!(start.cursor(), EventsCursor::After("event_9".into()));
        // Stopped mid-stream 29 days ago: still inside the window.
        let c = saved(NOW.saturating_sub(29 * DAY), NOW.saturating_sub(29 * DAY), false);
        assert!(matches!(decide(Some(&c), NOW, &cfg), Start::Resume { .. }));
    }

    #[test]
    fn a_cursor_older_than_the_retention_window_has_expired() {
        let cfg = EventsPollerConfig::default();
        let c = saved(NOW.saturating_sub(31 * DAY), NOW.saturating_sub(31 * DAY), true);
        assert_eq!(
            decide(Some(&c), NOW, &cfg),
            Start::Expired {
                from: NOW.saturating_sub(Duration::from_secs(24 * 3600)),
                age: 31 * DAY
            }
        );
        // Saved a minute ago, but still reading a backlog older than the window: expired too.
        let c = saved(NOW.saturating_sub(31 * DAY), NOW.saturating_sub(MIN), false);
        assert!(matches!(decide(Some(&c), NOW, &cfg), Start::Expired { .. }));
    }

    #[test]
    fn an_idle_cursor_whose_event_grows_old_restarts_from_a_time() {
        let cfg = EventsPollerConfig::default();
        let saved_at = NOW.saturating_sub(MIN);
        let c = saved(NOW.saturating_sub(20 * DAY), saved_at, true);
        assert_eq!(
            decide(Some(&c), NOW, &cfg),
            Start::Rewind {
                from: saved_at.saturating_sub(Duration::from_secs(300))
            }
        );
    }

    #[test]
    fn every_type_the_processor_handles_is_polled_and_nothing_else() {
        for t in POLLED_TYPES {
            assert!(is_polled(t), "{t}");
            let body = format!(
                r#"{{"id":"e","event":"{t}","data":{{"object":"directory","id":"d","directory_id":"d","user":{{"id":"u"}}}}}}"#
            );
            let action = crate::plan::parse_event(&body).expect("parses").action;
            assert_ne!(action, crate::plan::Action::Ignore, "{t} must do something");
        }
        for t in [
            "dsync.token.created",
            "user.created",
            "dsync.deactivated",
            "connection.activated",
        ] {
            assert!(!is_polled(t), "{t}");
        }
        assert_eq!(POLLED_TYPES.iter().collect::<BTreeSet<_>>().len(), POLLED_TYPES.len());
    }

    #[test]
    fn enqueued_like_the_receiver_with_the_events_api_source() {
        let raw = r#"{"id":"event_1","event":"dsync.user.updated","data":{"id":"u","directory_id":"directory_7"}}"#;
        let m = outgoing(&RawEvent::parse(raw.into()).expect("event"));
        assert_eq!(m.body, raw);
        assert_eq!(m.group, "directory_7");
        let attrs: HashMap<&str, &str> = m.attributes.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(attrs.get("source"), Some(&"events-api"));
        assert_eq!(attrs.get("workos_event_id"), Some(&"event_1"));
        assert_eq!(attrs.get("workos_event_type"), Some(&"dsync.user.updated"));
        assert_eq!(attrs.get("workos_directory_id"), Some(&"directory_7"));
        assert_eq!(attrs.get("body_encoding"), None);
        // A body SQS would refuse goes base64, marked so the processor decodes it.
        let odd =
            "{\"id\":\"event_2\",\"event\":\"dsync.user.created\",\"data\":{\"directory_id\":\"d\",\"x\":\"\u{FFFE}\"}}";
        let m = outgoing(&RawEvent::parse(odd.into()).expect("event"));
        let attrs: HashMap<&str, &str> = m.attributes.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(attrs.get("body_encoding"), Some(&"base64"));
        assert_eq!(crate::queue::decode_body(&m.body, Some("base64")).as_deref(), Ok(odd));
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn base() -> HashMap<String, String> {
        env(&[
            (ENV_STATE_TABLE, "state"),
            (ENV_QUEUE_URL, "http://127.0.0.1:4566/123456789012/q"),
            (crate::secrets::ENV_API_KEY, "sk_test_secretkey"),
        ])
    }

    #[test]
    fn config_defaults_and_refusals() {
        let e = EventsPollerEnv::from_env(&base()).expect("config");
        assert_eq!(e.config.lookback, Duration::from_secs(24 * 3600));
        assert_eq!(e.config.retention, 30 * DAY);
        assert_eq!(e.config.max_pages, 50);
        assert_eq!(e.worker.key_rate_per_minute, 5400);
        assert!(!format!("{e:?}").contains("secretkey"));
        for k in [ENV_STATE_TABLE, ENV_QUEUE_URL] {
            let mut m = base();
            m.remove(k);
            assert_eq!(EventsPollerEnv::from_env(&m).err(), Some(ConfigError::Missing(k)));
        }
        for (k, v) in [
            (ENV_LOOKBACK_HOURS, "0"),
            (ENV_LOOKBACK_HOURS, "721"),
            (ENV_RETENTION_DAYS, "0"),
            (ENV_MAX_PAGES, "0"),
            (ENV_MAX_PAGES, "x"),
            (ENV_KEY_RATE_PER_MINUTE, "7000"),
            (ENV_QUEUE_URL, "queue"),
        ] {
            let mut m = base();
            m.insert(k.to_string(), v.to_string());
            match EventsPollerEnv::from_env(&m) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, k, "{k}={v}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }
}
