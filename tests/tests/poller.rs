//! The Events API poller (issue 10): WorkOS sandbox over HTTP → `GET /events` → the poller →
//! SQS (moto) → the local event source → the processor → DynamoDB (moto); and, on the in-memory
//! adapters with a manual clock, the cursor's lease and the run's bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::adapters::memory::{MemQueue, MemState};
use dsync::adapters::sqs_work::SqsWorkQueue;
use dsync::adapters::workos::WorkosClient;
use dsync::clock::{Clock, EpochMillis, ManualClock, SystemClock};
use dsync::directory::{ApiError, CallBudget, DirInfo, DirectoryList, Page};
use dsync::events_poller::{EventsPoller, EventsPollerConfig, PollReport, Polled, CURSOR_NAME, POLLED_TYPES};
use dsync::plan::{parse_message, Message};
use dsync::ports::events::{EventsApi, EventsCursor, RawEvent};
use dsync::ports::state::{Registered, SavedCursor, StateStore};
use dsync::view::{EntitlementReader, Lookup};
use integration_tests::stack::{config, drain_all, events_queue, Stack};
use workos_sandbox::direct::DirectApi;
use workos_sandbox::{NewUser, SandboxConfig, SeedSpec, Store};

const DAY: Duration = Duration::from_secs(86_400);

fn org_rule(org: &str, group_name: &str, ent: &str) -> String {
    format!(r#"{{"organizations":{{"{org}":{{"by_group_name":{{"{group_name}":["{ent}"]}}}}}}}}"#)
}

fn minute() -> EpochMillis {
    SystemClock.now().saturating_add(Duration::from_secs(60))
}

fn done(p: Polled) -> PollReport {
    match p {
        Polled::Done(r) => r,
        Polled::Busy => panic!("the run stood aside"),
    }
}

fn poller<A: EventsApi + DirectoryList>(
    stack: &Stack,
    api: A,
    queue: &str,
) -> EventsPoller<A, dsync::adapters::dynamo_state::DynamoStateStore, SqsWorkQueue, SystemClock> {
    EventsPoller::new(
        api,
        stack.state(),
        SqsWorkQueue::new(stack.sqs.clone(), queue),
        SystemClock,
        EventsPollerConfig::default(),
    )
}

/// Every message on the queue now (received and deleted), as (event id or request, attributes).
async fn take_all(stack: &Stack, queue: &str) -> Vec<(String, BTreeMap<String, String>)> {
    integration_tests::drain(&stack.sqs, queue)
        .await
        .into_iter()
        .map(|m| {
            let attrs: BTreeMap<String, String> = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                .collect();
            let what = match parse_message(m.body.as_deref().unwrap_or("")) {
                Ok(Message::Event(e)) => e.id,
                Ok(Message::Request {
                    directory_id, purge, ..
                }) => format!("request:{directory_id}:{purge}"),
                Ok(Message::Continue { directory_id }) => format!("continue:{directory_id}"),
                Err(e) => panic!("unreadable message: {e}"),
            };
            (what, attrs)
        })
        .collect()
}

async fn claim(stack: &Stack, event_id: &str) -> BTreeMap<String, String> {
    stack
        .dynamo
        .get_item()
        .table_name(&stack.events_table)
        .key("event_id", aws_sdk_dynamodb::types::AttributeValue::S(event_id.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("read claim")
        .item
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|s| (k, s.clone())))
        .collect()
}

/// Webhooks dropped by the sandbox: the poller brings the events to the queue, the processor
/// applies them, the reader sees the change.
#[tokio::test]
async fn dropped_webhooks_reach_the_processor_through_the_events_api() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Dropped").group("Enterprise Admins", 3));
    let dir = seeded.directory_id.clone();
    let admins = seeded.groups[0].clone();
    let queue = events_queue(&stack.sqs, "poller-dropped").await;
    let p = stack.processor_on(
        &queue,
        config(&org_rule(&seeded.organization_id, "Enterprise Admins", "admin-console")),
    );
    let poller = poller(&stack, stack.workos(), &queue);

    // First run: no cursor, the last 24 hours, which hold the seed's events.
    let first = done(poller.run(minute()).await.expect("poll"));
    assert_eq!(first.start, "first_run");
    assert_eq!(first.enqueued as usize, stack.sandbox.events().len());
    assert!(first.caught_up);
    drain_all(&stack.sqs, &queue, &p, Duration::from_secs(60)).await;
    let reader = EntitlementReader::new(stack.state());
    let leaver = admins.user_ids[0].clone();
    match reader.user(&dir, &leaver).await.expect("read") {
        Lookup::Found(v) => assert!(v.allows("admin-console")),
        other => panic!("{other:?}"),
    }

    // Every webhook from now on is lost.
    stack.sandbox.update_delivery(|m| m.drop = true);
    stack.sandbox.remove_member(&leaver, &admins.id).expect("remove");
    let joiner = stack
        .sandbox
        .create_user(&dir, NewUser::new("joiner@example.com"))
        .expect("user");
    stack.sandbox.add_member(&joiner, &admins.id).expect("add");
    assert!(stack.sandbox.wait_deliveries(Duration::from_secs(5)).await);
    let dropped: BTreeSet<String> = stack.sandbox.dropped_deliveries().into_iter().collect();
    assert_eq!(dropped.len(), 3, "user_removed, user.created, user_added");

    let second = done(poller.run(minute()).await.expect("poll"));
    assert_eq!((second.start, second.enqueued as usize), ("resume", dropped.len()));
    drain_all(&stack.sqs, &queue, &p, Duration::from_secs(90)).await;
    match reader.user(&dir, &leaver).await.expect("read") {
        Lookup::Found(v) => assert!(!v.allows("admin-console"), "{v:?}"),
        other => panic!("{other:?}"),
    }
    match reader.user(&dir, &joiner).await.expect("read") {
        Lookup::Found(v) => assert!(v.allows("admin-console") && v.is_current(), "{v:?}"),
        other => panic!("{other:?}"),
    }
    // Each dropped event was claimed once, brought by the Events API, and completed.
    for id in &dropped {
        let c = claim(&stack, id).await;
        assert_eq!(c.get("source").map(String::as_str), Some("events-api"), "{id}");
        assert_eq!(c.get("status").map(String::as_str), Some("COMPLETED"), "{id}");
    }
}

/// The cursor is in the state table: a new poller (a cold start) goes on after it and enqueues
/// only the events that came since.
#[tokio::test]
async fn the_cursor_survives_a_restart_and_only_newer_events_are_enqueued() {
    let stack = Stack::new().await;
    let seeded = stack.sandbox.seed_directory(SeedSpec::new("Restart").group("Staff", 2));
    let queue = events_queue(&stack.sqs, "poller-restart").await;
    let before: Vec<String> = stack.sandbox.events().into_iter().map(|e| e.id).collect();
    let first = done(
        poller(&stack, stack.workos(), &queue)
            .run(minute())
            .await
            .expect("poll"),
    );
    assert_eq!(first.cursor.as_ref(), before.last());
    let sent: Vec<String> = take_all(&stack, &queue).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(sent, before, "every event once, oldest first");
    let saved = stack.state().cursor(CURSOR_NAME).await.expect("read").expect("cursor");
    assert_eq!(saved.value.event_id.as_ref(), before.last());
    assert_eq!(saved.value.owner, None, "the lease is released");
    assert!(saved.value.caught_up);

    // A restart with nothing new: nothing enqueued.
    let idle = done(
        poller(&stack, stack.workos(), &queue)
            .run(minute())
            .await
            .expect("poll"),
    );
    assert_eq!((idle.start, idle.enqueued, idle.pages), ("resume", 0, 1));
    assert!(take_all(&stack, &queue).await.is_empty());

    // New events, then another restart: exactly those.
    let uid = stack
        .sandbox
        .create_user(&seeded.directory_id, NewUser::new("later@example.com"))
        .expect("user");
    stack.sandbox.add_member(&uid, &seeded.groups[0].id).expect("add");
    let newer: Vec<String> = stack
        .sandbox
        .events()
        .into_iter()
        .map(|e| e.id)
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(newer.len(), 2);
    let next = done(
        poller(&stack, stack.workos(), &queue)
            .run(minute())
            .await
            .expect("poll"),
    );
    assert_eq!(next.enqueued, 2);
    let sent = take_all(&stack, &queue).await;
    assert_eq!(sent.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), newer);
    for (_, attrs) in &sent {
        assert_eq!(attrs.get("source").map(String::as_str), Some("events-api"));
        assert_eq!(
            attrs.get("workos_directory_id").map(String::as_str),
            Some(seeded.directory_id.as_str())
        );
        assert!(attrs.contains_key("workos_event_id") && attrs.contains_key("workos_event_type"));
    }
}

/// The Events API, slowed down so two runs are surely in flight together.
#[derive(Clone)]
struct Slow<A>(A, Duration);

impl<A: EventsApi> EventsApi for Slow<A> {
    async fn events_page(
        &self,
        types: &[&str],
        cursor: EventsCursor,
        limit: u32,
        budget: &CallBudget,
    ) -> Result<Page<RawEvent>, ApiError> {
        tokio::time::sleep(self.1).await;
        self.0.events_page(types, cursor, limit, budget).await
    }
}

impl<A: DirectoryList> DirectoryList for Slow<A> {
    async fn directories_page(&self, after: Option<&str>, budget: &CallBudget) -> Result<Page<DirInfo>, ApiError> {
        self.0.directories_page(after, budget).await
    }
}

/// Two overlapping runs against the same state table: the cursor's lease lets one of them read,
/// the other stands aside, and every event reaches the queue exactly once.
#[tokio::test]
async fn overlapping_runs_enqueue_each_page_once() {
    let stack = Stack::new().await;
    // About 300 events: several pages of 100.
    stack
        .sandbox
        .seed_directory(SeedSpec::new("Overlap").group("Everyone", 150));
    let queue = events_queue(&stack.sqs, "poller-overlap").await;
    let slow = |c: WorkosClient| Slow(c, Duration::from_millis(150));
    let a = poller(&stack, slow(stack.workos()), &queue);
    let b = poller(&stack, slow(stack.workos()), &queue);
    let (ra, rb) = tokio::join!(a.run(minute()), b.run(minute()));
    let (ra, rb) = (ra.expect("run a"), rb.expect("run b"));
    let busy = [&ra, &rb].iter().filter(|r| matches!(r, Polled::Busy)).count();
    assert_eq!(busy, 1, "one run reads, the other stands aside: {ra:?} / {rb:?}");
    let all: Vec<String> = stack.sandbox.events().into_iter().map(|e| e.id).collect();
    assert!(all.len() > 250, "{}", all.len());
    let sent = take_all(&stack, &queue).await;
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (id, _) in &sent {
        *count.entry(id.clone()).or_default() += 1;
    }
    let twice: Vec<&String> = count.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "enqueued more than once: {twice:?}");
    assert_eq!(count.keys().cloned().collect::<Vec<_>>(), {
        let mut s = all.clone();
        s.sort();
        s
    });
    // And a third run right after finds nothing new.
    let third = done(
        poller(&stack, stack.workos(), &queue)
            .run(minute())
            .await
            .expect("poll"),
    );
    assert_eq!(third.enqueued, 0);
}

/// A cursor not saved for longer than the retention window: every directory (listed by WorkOS or
/// held in the registry) gets a reconcile request, and reading starts again from the lookback,
/// not after the stale event.
#[tokio::test]
async fn an_expired_cursor_reconciles_every_directory_and_restarts_from_range_start() {
    let clock = ManualClock::at(SystemClock.now().saturating_sub(2 * DAY));
    let stack = Stack::with_sandbox(SandboxConfig {
        clock: Arc::new(clock.clone()),
        ..SandboxConfig::new(integration_tests::stack::API_KEY)
    })
    .await;
    // Two days old: outside the 24-hour lookback.
    let old = stack.sandbox.seed_directory(SeedSpec::new("Old").group("Staff", 1));
    let old_events: BTreeSet<String> = stack.sandbox.events().into_iter().map(|e| e.id).collect();
    clock.set(SystemClock.now());
    let recent = stack.sandbox.seed_directory(SeedSpec::new("Recent").group("Staff", 2));
    let recent_events: Vec<String> = stack
        .sandbox
        .events()
        .into_iter()
        .map(|e| e.id)
        .filter(|id| !old_events.contains(id))
        .collect();
    // A directory we hold data for that WorkOS does not list any more.
    stack
        .state()
        .register(&Registered {
            directory_id: "directory_held_only_here".into(),
            organization_id: Some("org_x".into()),
            deleted: false,
        })
        .await
        .expect("register");
    // The cursor: the first event, saved 31 days ago.
    let first_event = old_events.iter().next().cloned().expect("an event");
    let long_ago = SystemClock.now().saturating_sub(31 * DAY);
    stack
        .state()
        .put_cursor(
            CURSOR_NAME,
            &SavedCursor {
                event_id: Some(first_event),
                event_at: Some(long_ago),
                saved_at: long_ago,
                caught_up: true,
                owner: None,
                lease_until: long_ago,
            },
            None,
        )
        .await
        .expect("put cursor")
        .expect("created");

    let queue = events_queue(&stack.sqs, "poller-expired").await;
    let r = done(
        poller(&stack, stack.workos(), &queue)
            .run(minute())
            .await
            .expect("poll"),
    );
    assert_eq!((r.start, r.reconcile_requests), ("expired", 3));
    let sent = take_all(&stack, &queue).await;
    let requests: BTreeSet<String> = sent
        .iter()
        .map(|(w, _)| w.clone())
        .filter(|w| w.starts_with("request:"))
        .collect();
    let want: BTreeSet<String> = [
        old.directory_id.as_str(),
        recent.directory_id.as_str(),
        "directory_held_only_here",
    ]
    .iter()
    .map(|d| format!("request:{d}:false"))
    .collect();
    assert_eq!(requests, want);
    // From range_start = now - 24 h: the recent directory's events only (after the stale cursor
    // it would have been every event but the first).
    let events: Vec<String> = sent
        .iter()
        .map(|(w, _)| w.clone())
        .filter(|w| !w.starts_with("request:"))
        .collect();
    assert_eq!(events, recent_events);
    let saved = stack.state().cursor(CURSOR_NAME).await.expect("read").expect("cursor");
    assert_eq!(saved.value.event_id.as_ref(), recent_events.last());
    assert!(saved.value.saved_at > long_ago.saturating_add(30 * DAY));
    // The next run resumes normally.
    let next = done(
        poller(&stack, stack.workos(), &queue)
            .run(minute())
            .await
            .expect("poll"),
    );
    assert_eq!((next.start, next.reconcile_requests, next.enqueued), ("resume", 0, 0));
}

// ------------------------------------------------------------------------- in memory

type MemPoller<A = DirectApi> = EventsPoller<A, MemState, MemQueue, ManualClock>;

fn mem(spec: SeedSpec, page: usize, cfg: EventsPollerConfig) -> (MemPoller, MemState, MemQueue, ManualClock) {
    let clock = ManualClock::at(SystemClock.now());
    let store = Arc::new(Mutex::new(Store::default()));
    store.lock().expect("store").seed(&spec, clock.now());
    let state = MemState::new();
    let queue = MemQueue::new(clock.clone(), Duration::from_secs(30), 20);
    let p = EventsPoller::new(
        DirectApi::new(store, page),
        state.clone(),
        queue.clone(),
        clock.clone(),
        cfg,
    );
    (p, state, queue, clock)
}

fn queued_ids(q: &MemQueue) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let msgs = q.receive(10);
        if msgs.is_empty() {
            return out;
        }
        for m in msgs {
            q.delete(&m.receipt);
            out.push(m.attributes.get("workos_event_id").cloned().unwrap_or_default());
        }
    }
}

/// A run whose lease is live makes another stand aside; a lease that ended (a crashed run) is
/// taken over and the work goes on from the saved cursor.
#[tokio::test]
async fn a_live_lease_is_respected_and_a_dead_one_taken_over() {
    let (p, state, queue, clock) = mem(
        SeedSpec::new("Lease").group("Staff", 3),
        100,
        EventsPollerConfig::default(),
    );
    let other = SavedCursor {
        owner: Some("crashed-run".into()),
        lease_until: clock.now().saturating_add(Duration::from_secs(70)),
        ..Default::default()
    };
    state
        .put_cursor(CURSOR_NAME, &other, None)
        .await
        .expect("put")
        .expect("created");
    let deadline = || clock.now().saturating_add(Duration::from_secs(60));
    assert_eq!(p.run(deadline()).await.expect("run"), Polled::Busy);
    assert!(queue.is_empty(), "nothing read, nothing enqueued");
    clock.advance(Duration::from_secs(71));
    let r = done(p.run(deadline()).await.expect("run"));
    assert_eq!((r.start, r.enqueued), ("first_run", 8));
    assert_eq!(queued_ids(&queue).len(), 8);
    let saved = state.cursor(CURSOR_NAME).await.expect("read").expect("cursor");
    assert_eq!(saved.value.owner, None);
}

/// Bounded runs: at most `max_pages` a run; the next run goes on where it stopped, and every
/// event is enqueued once.
#[tokio::test]
async fn a_run_stops_after_max_pages_and_the_next_goes_on() {
    let cfg = EventsPollerConfig {
        max_pages: 2,
        page_size: 5,
        ..EventsPollerConfig::default()
    };
    // 1 activated + 1 group + 12 users + 12 memberships = 26 events: 6 pages of 5.
    let (p, state, queue, clock) = mem(SeedSpec::new("Bounded").group("Staff", 12), 100, cfg);
    let deadline = || clock.now().saturating_add(Duration::from_secs(60));
    let mut all = Vec::new();
    let mut runs = 0;
    loop {
        let r = done(p.run(deadline()).await.expect("run"));
        runs += 1;
        all.extend(queued_ids(&queue));
        assert!(r.pages <= 2, "{r:?}");
        if r.caught_up {
            break;
        }
        assert_eq!(r.enqueued, 10, "{r:?}");
        assert!(
            !state
                .cursor(CURSOR_NAME)
                .await
                .expect("read")
                .expect("cursor")
                .value
                .caught_up
        );
        assert!(runs < 10);
    }
    assert_eq!(runs, 3);
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (26, 26));
    // A deadline too close: no page is read at all.
    let r = done(
        p.run(clock.now().saturating_add(Duration::from_secs(2)))
            .await
            .expect("run"),
    );
    assert_eq!(r.pages, 0);
}

/// A page that carries a type the processor does not handle: skipped, never fatal, and the
/// cursor moves past it.
#[derive(Clone)]
struct WithUnknown(DirectApi);

impl EventsApi for WithUnknown {
    async fn events_page(
        &self,
        types: &[&str],
        cursor: EventsCursor,
        limit: u32,
        budget: &CallBudget,
    ) -> Result<Page<RawEvent>, ApiError> {
        let mut page = self.0.events_page(types, cursor, limit, budget).await?;
        let last = page.items.last().map(|e| e.id.clone()).unwrap_or_default();
        page.items.push(
            RawEvent::parse(format!(
                r#"{{"object":"event","id":"{last}~","event":"dsync.token.created","data":{{"id":"t","directory_id":"d"}}}}"#
            ))
            .expect("event"),
        );
        Ok(page)
    }
}

impl DirectoryList for WithUnknown {
    async fn directories_page(&self, after: Option<&str>, budget: &CallBudget) -> Result<Page<DirInfo>, ApiError> {
        self.0.directories_page(after, budget).await
    }
}

#[tokio::test]
async fn unknown_event_types_are_skipped_not_fatal() {
    let clock = ManualClock::at(SystemClock.now());
    let store = Arc::new(Mutex::new(Store::default()));
    store
        .lock()
        .expect("store")
        .seed(&SeedSpec::new("Unknown").group("Staff", 1), clock.now());
    let state = MemState::new();
    let queue = MemQueue::new(clock.clone(), Duration::from_secs(30), 20);
    let p = EventsPoller::new(
        WithUnknown(DirectApi::new(store, 100)),
        state.clone(),
        queue.clone(),
        clock.clone(),
        EventsPollerConfig::default(),
    );
    let r = done(
        p.run(clock.now().saturating_add(Duration::from_secs(60)))
            .await
            .expect("run"),
    );
    assert_eq!((r.enqueued, r.skipped), (4, 1));
    let ids = queued_ids(&queue);
    assert!(ids.iter().all(|id| !id.ends_with('~')), "{ids:?}");
    let saved = state.cursor(CURSOR_NAME).await.expect("read").expect("cursor");
    assert!(saved.value.event_id.as_deref().is_some_and(|id| id.ends_with('~')));
    assert_eq!(POLLED_TYPES.len(), 10);
}
