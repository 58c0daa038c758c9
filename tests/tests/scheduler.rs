//! The scheduler (issue 10): directory discovery and scheduled reconciles, from the WorkOS
//! sandbox over HTTP through SQS (moto) and the processor to DynamoDB (moto); the watchdog and
//! the purge guard on the in-memory adapters with a manual clock. Also the shape of the engine's
//! `job finished` JSON log line that the `ReconcileDifferences` metric filter reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::adapters::dynamo_state::DynamoStateStore;
use dsync::adapters::memory::{MemClaims, MemMessage, MemQueue, MemState};
use dsync::adapters::sqs_work::SqsWorkQueue;
use dsync::clock::{Clock, EpochMillis, ManualClock, SystemClock};
use dsync::directory::{ApiError, CallBudget, DirGroup, DirInfo, DirUser, DirectoryApi, DirectoryList, Listing, Page};
use dsync::engine::Request;
use dsync::model::Membership;
use dsync::plan::{parse_message, Message};
use dsync::ports::state::{Registered, StateStore, Write};
use dsync::processor::{Processor, ProcessorConfig, Record, RecordOutcome};
use dsync::scheduler::{ScheduleReport, Scheduler, SchedulerConfig};
use dsync::view::{EntitlementReader, Lookup};
use integration_tests::stack::{config, drain_all, events_queue, Stack};
use serde_json::Value;
use workos_sandbox::direct::DirectApi;
use workos_sandbox::{SeedSpec, Store};

fn org_rule(org: &str, group_name: &str, ent: &str) -> String {
    format!(r#"{{"organizations":{{"{org}":{{"by_group_name":{{"{group_name}":["{ent}"]}}}}}}}}"#)
}

fn minute() -> EpochMillis {
    SystemClock.now().saturating_add(Duration::from_secs(60))
}

fn scheduler(
    stack: &Stack,
    queue: &str,
) -> Scheduler<dsync::adapters::workos::WorkosClient, DynamoStateStore, SqsWorkQueue, SystemClock> {
    Scheduler::new(
        stack.workos(),
        stack.state(),
        SqsWorkQueue::new(stack.sqs.clone(), queue),
        SystemClock,
        SchedulerConfig::default(),
    )
}

async fn allows(reader: &EntitlementReader<DynamoStateStore>, dir: &str, uid: &str, ent: &str) -> bool {
    match reader.user(dir, uid).await.expect("read") {
        Lookup::Found(v) => v.allows(ent),
        Lookup::NotFound => false,
        other => panic!("{uid}: {other:?}"),
    }
}

/// What `ReconcileDifferencesMetricFilter` in infra/template.yaml counts, read the way CloudWatch
/// reads the line: `{ $.fields.message = "job finished" && $.fields.kind = "reconcile" &&
/// $.fields.initial IS FALSE }` with the value `$.fields.differences` (`IS FALSE` matches a JSON
/// boolean only, and a metric value must be a JSON number).
fn reconcile_differences(line: &Value) -> Option<u64> {
    let f = &line["fields"];
    let matched = f["message"] == "job finished" && f["kind"] == "reconcile" && f["initial"] == Value::Bool(false);
    matched.then(|| f["differences"].as_u64()).flatten()
}

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    /// The test binary's global subscriber, as lambda_runtime's default one writes with
    /// `AWS_LAMBDA_LOG_FORMAT=JSON`. Global, not scoped to a test: a scoped subscriber misses
    /// callsites that tests on other threads registered first.
    fn global() -> &'static LogBuffer {
        static LOGS: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            use tracing_subscriber::util::SubscriberInitExt;
            let buf = LogBuffer::default();
            let writer = buf.clone();
            tracing_subscriber::fmt()
                .with_target(false)
                .without_time()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(move || writer.clone())
                .json()
                .finish()
                .try_init()
                .expect("the only global subscriber of this test binary");
            buf
        })
    }

    /// The JSON lines logged so far about one directory.
    fn lines_of(&self, directory_id: &str) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()).expect("utf8");
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON log line"))
            .filter(|l| l["fields"]["directory_id"] == directory_id)
            .collect()
    }
}

/// A directory made before deployment (seeded straight into WorkOS's state, no event ever
/// processed) gets its users' entitlements from the scheduler's request alone.
#[tokio::test]
async fn a_directory_created_before_deployment_is_synced_by_the_schedule_alone() {
    let stack = Stack::new().await;
    let seeded = stack.sandbox.store().lock().expect("store").seed(
        &SeedSpec::new("Before").group("Enterprise Admins", 3),
        SystemClock.now(),
    );
    assert!(stack.sandbox.deliveries().is_empty() && stack.sandbox.dropped_deliveries().is_empty());
    let queue = events_queue(&stack.sqs, "sched-before").await;
    let p = stack.processor_on(
        &queue,
        config(&org_rule(&seeded.organization_id, "Enterprise Admins", "admin-console")),
    );
    let report = scheduler(&stack, &queue).run(minute()).await.expect("schedule");
    assert_eq!(
        (report.listed, report.new_directories, report.reconciles, report.purges),
        (1, 1, 1, 0)
    );
    assert!(report.listing_complete);
    drain_all(&stack.sqs, &queue, &p, Duration::from_secs(60)).await;
    let reader = EntitlementReader::new(stack.state());
    for uid in &seeded.groups[0].user_ids {
        assert!(
            allows(&reader, &seeded.directory_id, uid, "admin-console").await,
            "{uid}"
        );
    }
    let ctl = stack.state().ctl(&seeded.directory_id).await.expect("ctl");
    assert!(ctl.last_run.expect("a run").initial);
    // No event was ever claimed: the schedule alone did it.
    let claims = stack
        .dynamo
        .scan()
        .table_name(&stack.events_table)
        .send()
        .await
        .expect("scan");
    assert_eq!(claims.count, 0);
    // The next run knows the directory.
    let again = scheduler(&stack, &queue).run(minute()).await.expect("schedule");
    assert_eq!((again.new_directories, again.reconciles), (0, 1));
}

/// A drift written straight into the state table (a membership removed, a stale group name) is
/// found by the scheduled reconcile, repaired and reported, in the run record and in the log
/// line the metric filter counts.
#[tokio::test]
async fn a_drift_in_the_state_table_is_found_repaired_and_reported() {
    let logs = LogBuffer::global();
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Drift").group("Enterprise Admins", 3));
    let dir = seeded.directory_id.clone();
    let group = seeded.groups[0].clone();
    let queue = events_queue(&stack.sqs, "sched-drift").await;
    let p = stack.processor_on(
        &queue,
        config(&org_rule(&seeded.organization_id, "Enterprise Admins", "admin-console")),
    );
    scheduler(&stack, &queue).run(minute()).await.expect("schedule");
    drain_all(&stack.sqs, &queue, &p, Duration::from_secs(60)).await;
    let reader = EntitlementReader::new(stack.state());
    let victim = group.user_ids[0].clone();
    assert!(allows(&reader, &dir, &victim, "admin-console").await);

    // The drift, written under the directory's fence like any holder would.
    let state = stack.state();
    let fence = state.fence(&dir).await.expect("fence").expect("a fence");
    assert!(fence.value.job.is_none() && fence.value.owner.is_none());
    let now = SystemClock.now();
    let user = state
        .users(&dir, std::slice::from_ref(&victim))
        .await
        .expect("users")
        .pop()
        .expect("user");
    let mut rec = user.value.clone();
    rec.groups.insert(
        group.id.clone(),
        Membership {
            present: false,
            at: now,
        },
    );
    rec.entitlements.clear();
    rec.computed_at = Some(now);
    let stored_group = state
        .groups(&dir)
        .await
        .expect("groups")
        .into_iter()
        .find(|g| g.value.group_id == group.id)
        .expect("group");
    let mut grec = stored_group.value.clone();
    grec.name = Some("Stale Name".into());
    grec.name_at = Some(now);
    state
        .commit(
            &dir,
            fence.version,
            vec![
                Write::User {
                    record: rec,
                    expect: Some(user.version),
                },
                Write::Member {
                    group_id: group.id.clone(),
                    user_id: victim.clone(),
                    present: false,
                },
                Write::Group {
                    record: grec,
                    expect: Some(stored_group.version),
                },
            ],
        )
        .await
        .expect("drift written");
    assert!(
        !allows(&reader, &dir, &victim, "admin-console").await,
        "the drift is visible"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;

    let report = scheduler(&stack, &queue).run(minute()).await.expect("schedule");
    assert_eq!((report.reconciles, report.new_directories), (1, 0));
    drain_all(&stack.sqs, &queue, &p, Duration::from_secs(60)).await;
    let run = stack.state().ctl(&dir).await.expect("ctl").last_run.expect("a run");
    assert!(!run.initial);
    assert!(run.stats.differences() >= 2, "{:?}", run.stats);
    assert!(
        run.stats.memberships_added >= 1 && run.stats.groups_renamed >= 1,
        "{:?}",
        run.stats
    );
    assert!(allows(&reader, &dir, &victim, "admin-console").await, "repaired");
    let names = EntitlementReader::new(stack.state())
        .group_names(&dir)
        .await
        .expect("names");
    assert!(
        names.contains(&(group.id.clone(), Some("Enterprise Admins".into()))),
        "{names:?}"
    );

    // The log lines: the initial sync is not counted, the repair is, with its differences.
    let finished: Vec<Value> = logs
        .lines_of(&dir)
        .into_iter()
        .filter(|l| l["fields"]["message"] == "job finished")
        .collect();
    assert!(finished
        .iter()
        .all(|l| l["fields"]["initial"].is_boolean() && l["fields"]["differences"].is_u64()));
    let counted: Vec<u64> = finished.iter().filter_map(reconcile_differences).collect();
    assert_eq!(counted, [run.stats.differences()], "{finished:#?}");
}

/// A directory deleted in WorkOS (no `dsync.deleted` delivered) is purged by the scheduler's
/// request through the tombstone; the other directory is reconciled as usual.
#[tokio::test]
async fn a_directory_deleted_in_workos_is_purged_through_the_tombstone() {
    let stack = Stack::new().await;
    let gone = stack.sandbox.seed_directory(SeedSpec::new("Gone").group("Staff", 2));
    let kept = stack.sandbox.seed_directory(SeedSpec::new("Kept").group("Staff", 1));
    let queue = events_queue(&stack.sqs, "sched-gone").await;
    let p = stack.processor_on(&queue, config(&org_rule(&gone.organization_id, "Staff", "staff-app")));
    scheduler(&stack, &queue).run(minute()).await.expect("schedule");
    drain_all(&stack.sqs, &queue, &p, Duration::from_secs(60)).await;
    let reader = EntitlementReader::new(stack.state());
    for uid in &gone.user_ids {
        assert!(allows(&reader, &gone.directory_id, uid, "staff-app").await);
    }

    stack
        .sandbox
        .store()
        .lock()
        .expect("store")
        .delete_directory(&gone.directory_id, SystemClock.now())
        .expect("delete");
    let report = scheduler(&stack, &queue).run(minute()).await.expect("schedule");
    assert_eq!((report.listed, report.reconciles, report.purges), (1, 1, 1));
    drain_all(&stack.sqs, &queue, &p, Duration::from_secs(60)).await;
    for uid in &gone.user_ids {
        assert_eq!(
            reader.user(&gone.directory_id, uid).await.expect("read"),
            Lookup::NotFound,
            "{uid}"
        );
        assert_eq!(reader.user_by_id(uid).await.expect("read"), Lookup::NotFound, "{uid}");
    }
    let registry = stack.state().registered(None, 10).await.expect("registry").items;
    let entry = |d: &str| {
        registry
            .iter()
            .find(|r| r.directory_id == d)
            .cloned()
            .expect("registered")
    };
    assert!(entry(&gone.directory_id).deleted);
    assert!(!entry(&kept.directory_id).deleted);
    let fence = stack
        .state()
        .fence(&gone.directory_id)
        .await
        .expect("fence")
        .expect("fence");
    assert!(fence.value.deleted_at.is_some() && fence.value.job.is_none());
    let kept_ctl = stack.state().ctl(&kept.directory_id).await.expect("ctl");
    assert!(kept_ctl.full_applied_at.is_some() && kept_ctl.deleted_at.is_none());
    // Deleted stays deleted: the next run asks nothing more for it.
    let again = scheduler(&stack, &queue).run(minute()).await.expect("schedule");
    assert_eq!((again.reconciles, again.purges), (1, 0));
}

// ------------------------------------------------------------------------- in memory

/// The sandbox read in-process, with each call taking `tick` of the manual clock (a slow WorkOS),
/// and optionally one directory left out of `GET /directories` (a listing that misses one).
#[derive(Clone)]
struct Api {
    inner: DirectApi,
    clock: ManualClock,
    tick: Duration,
    hide: Option<String>,
}

impl Api {
    fn tick(&self) {
        self.clock.advance(self.tick);
    }
}

impl DirectoryApi for Api {
    async fn get_directory(&self, d: &str, b: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        self.tick();
        self.inner.get_directory(d, b).await
    }
    async fn get_user(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        self.tick();
        self.inner.get_user(d, u, b).await
    }
    async fn get_group(&self, d: &str, g: &str, b: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.tick();
        self.inner.get_group(d, g, b).await
    }
    async fn user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<Vec<DirGroup>>, ApiError> {
        self.tick();
        self.inner.user_groups(d, u, b).await
    }
    async fn users_page(
        &self,
        d: &str,
        l: Listing<'_>,
        a: Option<&str>,
        b: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        self.tick();
        self.inner.users_page(d, l, a, b).await
    }
    async fn groups_page(&self, d: &str, a: Option<&str>, b: &CallBudget) -> Result<Option<Page<DirGroup>>, ApiError> {
        self.tick();
        self.inner.groups_page(d, a, b).await
    }
}

impl DirectoryList for Api {
    async fn directories_page(&self, after: Option<&str>, b: &CallBudget) -> Result<Page<DirInfo>, ApiError> {
        let mut page = self.inner.directories_page(after, b).await?;
        page.items.retain(|d| Some(&d.id) != self.hide.as_ref());
        Ok(page)
    }
}

struct Mem {
    store: Arc<Mutex<Store>>,
    api: Api,
    state: MemState,
    queue: MemQueue,
    clock: ManualClock,
}

impl Mem {
    fn new(page: usize, tick: Duration) -> Mem {
        let clock = ManualClock::at(SystemClock.now());
        let store = Arc::new(Mutex::new(Store::default()));
        Mem {
            api: Api {
                inner: DirectApi::new(store.clone(), page),
                clock: clock.clone(),
                tick,
                hide: None,
            },
            store,
            state: MemState::new(),
            queue: MemQueue::new(clock.clone(), Duration::from_secs(60), 20),
            clock,
        }
    }

    fn scheduler(&self) -> Scheduler<Api, MemState, MemQueue, ManualClock> {
        Scheduler::new(
            self.api.clone(),
            self.state.clone(),
            self.queue.clone(),
            self.clock.clone(),
            SchedulerConfig::default(),
        )
    }

    async fn schedule(&self) -> ScheduleReport {
        self.scheduler()
            .run(self.clock.now().saturating_add(Duration::from_secs(60)))
            .await
            .expect("schedule")
    }

    fn processor(&self) -> Processor<Api, MemClaims, MemState, MemQueue, ManualClock> {
        Processor::new(
            self.api.clone(),
            MemClaims::new(),
            self.state.clone(),
            self.queue.clone(),
            self.clock.clone(),
            ProcessorConfig::default(),
        )
    }

    /// Everything on the queue now, as (what, source); the queue is left empty.
    fn take(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        loop {
            let msgs = self.queue.receive(10);
            if msgs.is_empty() {
                return out;
            }
            for m in msgs {
                self.queue.delete(&m.receipt);
                let what = match parse_message(&m.body).expect("readable") {
                    Message::Request {
                        directory_id, purge, ..
                    } => format!("request:{directory_id}:{purge}"),
                    Message::Continue { directory_id } => format!("continue:{directory_id}"),
                    Message::Event(e) => e.id,
                };
                out.push((what, m.source.clone()));
            }
        }
    }

    /// Process the queue until it is empty, moving the clock to each delayed message.
    async fn drain(&self, p: &Processor<Api, MemClaims, MemState, MemQueue, ManualClock>) {
        for _ in 0..1000 {
            let msgs = self.queue.receive(10);
            if msgs.is_empty() {
                match self.queue.next_visible() {
                    Some(t) => {
                        if t > self.clock.now() {
                            self.clock.set(t);
                        }
                        continue;
                    }
                    None => return,
                }
            }
            let records: Vec<Record> = msgs.iter().map(MemMessage::record).collect();
            let deadline = self.clock.now().saturating_add(Duration::from_secs(60));
            for (m, o) in msgs.iter().zip(p.process_batch(&records, deadline).await) {
                match o {
                    RecordOutcome::Retry { delay: Some(d), .. } => {
                        self.queue.set_visibility(&m.receipt, d);
                    }
                    RecordOutcome::Retry { delay: None, .. } => {}
                    _ => {
                        self.queue.delete(&m.receipt);
                    }
                }
            }
        }
        panic!("the queue did not empty");
    }
}

/// A job whose continuation was lost: the watchdog sends one once nobody has worked on it for
/// ten minutes, and the job then finishes.
#[tokio::test]
async fn the_watchdog_continues_a_job_left_behind() {
    // Pages of 5 and two seconds per WorkOS call: a 60-user directory takes several chunks.
    let m = Mem::new(5, Duration::from_secs(2));
    let seeded = m
        .store
        .lock()
        .expect("store")
        .seed(&SeedSpec::new("Behind").group("Staff", 60), m.clock.now());
    let dir = seeded.directory_id.clone();
    let p = m.processor();
    p.engine()
        .run(
            &dir,
            &[Request::Full { after: m.clock.now() }],
            &Default::default(),
            m.clock.now().saturating_add(Duration::from_secs(60)),
        )
        .await
        .expect("first chunk");
    let fence = m.state.fence(&dir).await.expect("fence").expect("fence");
    assert!(fence.value.job.is_some(), "the job must outlast its first chunk");
    // Its continuation is lost.
    assert_eq!(m.take(), [(format!("continue:{dir}"), "continuation".to_string())]);

    // Five minutes later the job is not stale yet.
    m.clock.advance(Duration::from_secs(300));
    let r = m.schedule().await;
    assert_eq!(r.continuations, 0);
    let sent = m.take();
    assert!(!sent.iter().any(|(w, _)| w.starts_with("continue:")), "{sent:?}");

    // Eleven minutes after: it is.
    m.clock.advance(Duration::from_secs(360));
    let r = m.schedule().await;
    assert_eq!(r.continuations, 1);
    let sent = m.take();
    assert!(
        sent.contains(&(format!("continue:{dir}"), "continuation".to_string())),
        "{sent:?}"
    );
    // Only the continuation goes back on the queue: it alone finishes the job.
    m.queue.send(
        serde_json::json!({ "object": "dsync_continuation", "directory_id": dir }).to_string(),
        Some(&dir),
        "continuation",
        Duration::ZERO,
    );
    m.drain(&p).await;
    let fence = m.state.fence(&dir).await.expect("fence").expect("fence");
    assert!(fence.value.job.is_none());
    assert!(m.state.ctl(&dir).await.expect("ctl").full_applied_at.is_some());
}

/// Purges only for directories WorkOS really has no more (a listing that misses one is checked
/// with `GET /directories/{id}`), and none at all when most of ours vanish at once.
#[tokio::test]
async fn purges_are_confirmed_and_refused_when_most_directories_vanish() {
    let mut m = Mem::new(100, Duration::ZERO);
    let live = m
        .store
        .lock()
        .expect("store")
        .seed(&SeedSpec::new("Live").group("Staff", 1), m.clock.now());
    let listed_late = m
        .store
        .lock()
        .expect("store")
        .seed(&SeedSpec::new("Hidden").group("Staff", 1), m.clock.now());
    for d in [&live.directory_id, &listed_late.directory_id, "directory_gone_1"] {
        m.state
            .register(&Registered {
                directory_id: d.to_string(),
                organization_id: None,
                deleted: false,
            })
            .await
            .expect("register");
    }
    m.api.hide = Some(listed_late.directory_id.clone());
    let r = m.schedule().await;
    assert_eq!((r.listed, r.reconciles, r.purges, r.purges_refused), (1, 1, 1, 0));
    let sent: BTreeSet<(String, String)> = m.take().into_iter().collect();
    assert_eq!(
        sent,
        BTreeSet::from([
            (format!("request:{}:false", live.directory_id), "schedule".to_string()),
            ("request:directory_gone_1:true".to_string(), "schedule".to_string()),
        ])
    );

    // Most of our directories gone at once: a wrong key, not deletions. Nothing is purged.
    for n in 2..=4 {
        m.state
            .register(&Registered {
                directory_id: format!("directory_gone_{n}"),
                organization_id: None,
                deleted: false,
            })
            .await
            .expect("register");
    }
    m.api.hide = None;
    let r = m.schedule().await;
    assert_eq!((r.listed, r.purges, r.purges_refused), (2, 0, 4));
    let sent: BTreeMap<String, String> = m.take().into_iter().collect();
    assert!(sent.keys().all(|w| w.ends_with(":false")), "{sent:?}");
    assert_eq!(sent.len(), 2);
}
