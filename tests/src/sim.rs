//! A deterministic simulation of the whole pipeline for the convergence property test: a WorkOS
//! sandbox whose state a script changes, a queue that delivers its events shuffled, duplicated,
//! delayed or not at all, several processor invocations interleaved call by call, and crashes
//! injected before or after any port call (store, claims, WorkOS, queue).
//!
//! The oracle: (1) every time an event is COMPLETED, the facts it concerns are stored as WorkOS
//! had them at some moment since the event (never older); (2) once everything is delivered and the
//! queue is empty, the gate's answer for every user equals what WorkOS's state implies under the
//! rules; a deleted directory answers nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use dsync::adapters::memory::{MemMessage, MemQueue};
use dsync::clock::{Clock, EpochMillis, ManualClock};
use dsync::directory::{ApiError, CallBudget, DirGroup, DirInfo, DirUser, DirectoryApi, Listing, Page, UserState};
use dsync::model::{GroupRecord, UserRecord};
use dsync::ports::claims::{ClaimRequest, ClaimResult, ClaimStore, Completion};
use dsync::ports::queue::{WorkQueue, WorkQueueError};
use dsync::ports::state::*;
use dsync::ports::StoreError;
use dsync::processor::{Processor, ProcessorConfig, Record, RecordOutcome};
use dsync::rules::{GroupRef, Rules, Tenant};
use dsync::view::{EntitlementReader, Lookup};
use workos_sandbox::{NewUser, SeedSpec, Store, UserUpdate};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ------------------------------------------------------------------------------ crash points

/// Where one invocation dies (after `countdown` port calls, before or after the call lands), or
/// stalls: stops for a while (longer than its lease) and then goes on, as a paused process would.
#[derive(Debug)]
pub struct Plan {
    countdown: AtomicI64,
    after: bool,
    crashed: AtomicBool,
    /// Instead of dying at the countdown, stall this long.
    stall: Option<Duration>,
    /// Count only calls of this port method (e.g. `commit`); all of them when `None`.
    only: Option<&'static str>,
    stalled_until: Mutex<Option<EpochMillis>>,
    clock: ManualClock,
    latency_ms: u64,
    /// The port call under way, and since when (wall time): what a stuck run is waiting for.
    current: Mutex<Option<(&'static str, std::time::Instant)>>,
}

impl Plan {
    pub fn new(clock: ManualClock, crash_at: Option<i64>, after: bool, latency_ms: u64) -> Arc<Plan> {
        Self::with_stall(clock, crash_at, after, latency_ms, None)
    }

    pub fn with_stall(
        clock: ManualClock,
        crash_at: Option<i64>,
        after: bool,
        latency_ms: u64,
        stall: Option<Duration>,
    ) -> Arc<Plan> {
        Arc::new(Plan {
            countdown: AtomicI64::new(crash_at.unwrap_or(-1)),
            after,
            crashed: AtomicBool::new(false),
            stall,
            only: None,
            stalled_until: Mutex::new(None),
            clock,
            latency_ms,
            current: Mutex::new(None),
        })
    }

    /// Die at the `n`-th call of `method` only (after it lands when `after`).
    pub fn on_call(clock: ManualClock, method: &'static str, n: i64, after: bool) -> Arc<Plan> {
        Arc::new(Plan {
            countdown: AtomicI64::new(n),
            after,
            crashed: AtomicBool::new(false),
            stall: None,
            only: Some(method),
            stalled_until: Mutex::new(None),
            clock,
            latency_ms: 0,
            current: Mutex::new(None),
        })
    }

    /// When a stalled invocation goes on, if it is stalled now.
    pub fn stalled_until(&self) -> Option<EpochMillis> {
        (*lock(&self.stalled_until)).filter(|t| *t > self.clock.now())
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// What this invocation is doing, for the report of a run that does not settle.
    pub fn describe(&self) -> String {
        let call = match *lock(&self.current) {
            Some((m, since)) => format!("in {m} for {:.1} s", since.elapsed().as_secs_f64()),
            None => "between calls".into(),
        };
        match self.stalled_until() {
            Some(t) => format!("stalled until {t:?}, {call}"),
            None => call,
        }
    }

    /// One port call: yield once (another invocation may run), take some time, maybe die.
    async fn point<T, F: Future<Output = T>>(&self, method: &'static str, call: F) -> T {
        YieldOnce(false).await;
        *lock(&self.current) = Some((method, std::time::Instant::now()));
        let out = self.point_inner(method, call).await;
        *lock(&self.current) = None;
        out
    }

    async fn point_inner<T, F: Future<Output = T>>(&self, method: &'static str, call: F) -> T {
        self.clock.advance(Duration::from_millis(self.latency_ms));
        if self.only.is_some_and(|m| m != method) {
            return call.await;
        }
        let left = self.countdown.fetch_sub(1, Ordering::SeqCst);
        if left == 1 {
            if let Some(d) = self.stall {
                let until = self.clock.now().saturating_add(d);
                *lock(&self.stalled_until) = Some(until);
                Sleep {
                    clock: &self.clock,
                    until,
                }
                .await;
                return call.await;
            }
            if self.after {
                let _landed = call.await;
            }
            self.crashed.store(true, Ordering::SeqCst);
            return std::future::pending::<T>().await;
        }
        call.await
    }
}

/// Pending until the clock reaches `until`.
struct Sleep<'a> {
    clock: &'a ManualClock,
    until: EpochMillis,
}

impl Future for Sleep<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.clock.now() >= self.until {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// Pending once, then ready: hands control back to the driver between port calls.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A port whose every call is a crash point.
#[derive(Debug, Clone)]
pub struct Crashy<T> {
    pub inner: T,
    pub plan: Arc<Plan>,
}

impl<S: StateStore> StateStore for Crashy<S> {
    fn metered(&self, meter: Arc<Meter>) -> Self {
        Crashy {
            inner: self.inner.metered(meter),
            plan: self.plan.clone(),
        }
    }
    async fn users(&self, dir: &str, ids: &[String]) -> Result<Vec<Versioned<UserRecord>>, StoreError> {
        self.plan.point("users", self.inner.users(dir, ids)).await
    }
    async fn users_page(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Stored<Versioned<UserRecord>>, StoreError> {
        self.plan
            .point("users_page", self.inner.users_page(dir, after, limit))
            .await
    }
    async fn groups(&self, dir: &str) -> Result<Vec<Versioned<GroupRecord>>, StoreError> {
        self.plan.point("groups", self.inner.groups(dir)).await
    }
    async fn members_page(
        &self,
        dir: &str,
        g: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Stored<String>, StoreError> {
        self.plan
            .point("members_page", self.inner.members_page(dir, g, after, limit))
            .await
    }
    async fn commit(&self, dir: &str, v: u64, writes: Vec<Write>) -> Result<(), CommitError> {
        self.plan.point("commit", self.inner.commit(dir, v, writes)).await
    }
    async fn fence(&self, dir: &str) -> Result<Option<Versioned<Fence>>, StoreError> {
        self.plan.point("fence", self.inner.fence(dir)).await
    }
    async fn put_fence(&self, dir: &str, f: &Fence, expect: Option<u64>) -> Result<Option<u64>, StoreError> {
        self.plan.point("put_fence", self.inner.put_fence(dir, f, expect)).await
    }
    async fn ctl(&self, dir: &str) -> Result<Ctl, StoreError> {
        self.plan.point("ctl", self.inner.ctl(dir)).await
    }
    async fn pending_users(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, EpochMillis)>, bool), StoreError> {
        self.plan
            .point("pending_users", self.inner.pending_users(dir, after, limit))
            .await
    }
    async fn pending_user(&self, dir: &str, user_id: &str) -> Result<Option<EpochMillis>, StoreError> {
        self.plan
            .point("pending_user", self.inner.pending_user(dir, user_id))
            .await
    }
    async fn absorb(&self, dir: &str, a: &Absorb) -> Result<(), StoreError> {
        self.plan.point("absorb", self.inner.absorb(dir, a)).await
    }
    async fn drain(&self, dir: &str, u: &[(String, EpochMillis)], g: &[String]) -> Result<(), StoreError> {
        self.plan.point("drain", self.inner.drain(dir, u, g)).await
    }
    async fn change_ctl(&self, dir: &str, c: &CtlChange) -> Result<(), StoreError> {
        self.plan.point("change_ctl", self.inner.change_ctl(dir, c)).await
    }
    async fn put_seen(&self, dir: &str, run: &str, c: &str, page: u32, seen: &SeenPage) -> Result<(), StoreError> {
        self.plan
            .point("put_seen", self.inner.put_seen(dir, run, c, page, seen))
            .await
    }
    async fn seen(&self, dir: &str, run: &str, c: &str) -> Result<Vec<SeenPage>, StoreError> {
        self.plan.point("seen", self.inner.seen(dir, run, c)).await
    }
    async fn seen_page(&self, dir: &str, run: &str, c: &str, page: u32) -> Result<Option<SeenPage>, StoreError> {
        self.plan
            .point("seen_page", self.inner.seen_page(dir, run, c, page))
            .await
    }
    async fn alias(&self, u: &str) -> Result<Option<String>, StoreError> {
        self.plan.point("alias", self.inner.alias(u)).await
    }
    async fn lookups(&self, org: &str, kind: LookupKind, hash: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.plan.point("lookups", self.inner.lookups(org, kind, hash)).await
    }
    async fn purge_page(&self, dir: &str, after: Option<&str>, limit: usize) -> Result<Purged, StoreError> {
        self.plan
            .point("purge_page", self.inner.purge_page(dir, after, limit))
            .await
    }
    async fn put_run(&self, dir: &str, run: &RunSummary) -> Result<(), StoreError> {
        self.plan.point("put_run", self.inner.put_run(dir, run)).await
    }
    async fn register(&self, entry: &Registered) -> Result<(), StoreError> {
        self.plan.point("register", self.inner.register(entry)).await
    }
    async fn registered(&self, after: Option<&str>, limit: usize) -> Result<Stored<Registered>, StoreError> {
        self.plan.point("registered", self.inner.registered(after, limit)).await
    }
    async fn cursor(&self, name: &str) -> Result<Option<Versioned<SavedCursor>>, StoreError> {
        self.plan.point("cursor", self.inner.cursor(name)).await
    }
    async fn put_cursor(&self, name: &str, c: &SavedCursor, expect: Option<u64>) -> Result<Option<u64>, StoreError> {
        self.plan
            .point("put_cursor", self.inner.put_cursor(name, c, expect))
            .await
    }
}

impl<C: ClaimStore> ClaimStore for Crashy<C> {
    async fn claim(&self, r: &ClaimRequest<'_>) -> Result<ClaimResult, StoreError> {
        self.plan.point("claim", self.inner.claim(r)).await
    }
    async fn complete(&self, c: &Completion<'_>) -> Result<bool, StoreError> {
        self.plan.point("complete", self.inner.complete(c)).await
    }
    async fn release(&self, id: &str, token: &str) -> Result<(), StoreError> {
        self.plan.point("release", self.inner.release(id, token)).await
    }
    async fn record_invalid(
        &self,
        key: &str,
        reason: &str,
        now: EpochMillis,
        exp: dsync::clock::EpochSeconds,
    ) -> Result<(), StoreError> {
        self.plan
            .point("record_invalid", self.inner.record_invalid(key, reason, now, exp))
            .await
    }
}

impl<A: DirectoryApi> DirectoryApi for Crashy<A> {
    async fn get_directory(&self, d: &str, b: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        self.plan.point("get_directory", self.inner.get_directory(d, b)).await
    }
    async fn get_user(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        self.plan.point("get_user", self.inner.get_user(d, u, b)).await
    }
    async fn get_group(&self, d: &str, g: &str, b: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.plan.point("get_group", self.inner.get_group(d, g, b)).await
    }
    async fn user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<Vec<DirGroup>>, ApiError> {
        self.plan.point("user_groups", self.inner.user_groups(d, u, b)).await
    }
    async fn users_page(
        &self,
        d: &str,
        l: Listing<'_>,
        a: Option<&str>,
        b: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        self.plan.point("users_page", self.inner.users_page(d, l, a, b)).await
    }
    async fn groups_page(&self, d: &str, a: Option<&str>, b: &CallBudget) -> Result<Option<Page<DirGroup>>, ApiError> {
        self.plan.point("groups_page", self.inner.groups_page(d, a, b)).await
    }
    fn pace_next(&self, d: &str) -> Option<EpochMillis> {
        self.inner.pace_next(d)
    }
    fn pace_from(&self, d: &str, at: EpochMillis) {
        self.inner.pace_from(d, at)
    }
}

impl<Q: WorkQueue> WorkQueue for Crashy<Q> {
    async fn continue_later(&self, d: &str, delay: Duration) -> Result<(), WorkQueueError> {
        self.plan
            .point("continue_later", self.inner.continue_later(d, delay))
            .await
    }
    async fn defer(&self, r: &str, delay: Duration) -> Result<(), WorkQueueError> {
        self.plan.point("defer", self.inner.defer(r, delay)).await
    }
}

type Check = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A claim store that runs a check after every successful completion.
#[derive(Clone)]
pub struct Checked<C> {
    pub inner: C,
    pub check: Check,
}

impl<C: ClaimStore> ClaimStore for Checked<C> {
    async fn claim(&self, r: &ClaimRequest<'_>) -> Result<ClaimResult, StoreError> {
        self.inner.claim(r).await
    }
    async fn complete(&self, c: &Completion<'_>) -> Result<bool, StoreError> {
        let done = self.inner.complete(c).await?;
        if done {
            (self.check)(c.event_id.to_string()).await;
        }
        Ok(done)
    }
    async fn release(&self, id: &str, token: &str) -> Result<(), StoreError> {
        self.inner.release(id, token).await
    }
    async fn record_invalid(
        &self,
        key: &str,
        reason: &str,
        now: EpochMillis,
        exp: dsync::clock::EpochSeconds,
    ) -> Result<(), StoreError> {
        self.inner.record_invalid(key, reason, now, exp).await
    }
}

// ------------------------------------------------------------------------------------- truth

/// WorkOS's state at one instant, as far as entitlements go.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub at: EpochMillis,
    /// user → (directory, state)
    pub users: BTreeMap<String, (String, UserState)>,
    /// group → (directory, name)
    pub groups: BTreeMap<String, (String, String)>,
    /// (user, group)
    pub members: BTreeSet<(String, String)>,
    /// directory → organization
    pub directories: BTreeMap<String, String>,
}

impl Truth {
    pub fn of(store: &Store, at: EpochMillis) -> Truth {
        let mut t = Truth {
            at,
            ..Default::default()
        };
        for d in store.all_directories() {
            t.directories.insert(d.id.clone(), d.organization_id.clone());
        }
        for u in store.all_users() {
            t.users.insert(
                u.id.clone(),
                (u.directory_id.clone(), UserState::parse(u.state.as_str())),
            );
            for g in store.groups_of(&u.id) {
                t.members.insert((u.id.clone(), g.id.clone()));
            }
        }
        for g in store.all_groups() {
            t.groups.insert(g.id.clone(), (g.directory_id.clone(), g.name.clone()));
        }
        t
    }

    fn state(&self, uid: &str) -> UserState {
        self.users.get(uid).map_or(UserState::Deleted, |(_, s)| s.clone())
    }

    /// What the rules grant the user, per this state.
    pub fn entitlements(&self, rules: &Rules, uid: &str) -> BTreeSet<String> {
        let Some((dir, state)) = self.users.get(uid) else {
            return BTreeSet::new();
        };
        let org = self.directories.get(dir).cloned().unwrap_or_default();
        let groups: Vec<(String, String)> = self
            .members
            .iter()
            .filter(|(u, _)| u == uid)
            .filter_map(|(_, g)| self.groups.get(g).map(|(_, n)| (g.clone(), n.clone())))
            .collect();
        rules.entitlements(
            Tenant {
                organization_id: &org,
                directory_id: dir,
            },
            state,
            groups.iter().map(|(id, name)| GroupRef { id, name }),
        )
    }
}

/// What an event concerns.
#[derive(Debug, Clone)]
pub struct Meta {
    pub kind: String,
    pub directory: String,
    pub user: Option<String>,
    pub group: Option<String>,
    pub created: EpochMillis,
}

/// Every state WorkOS went through, and what each event was about.
#[derive(Default)]
pub struct History {
    pub truths: Vec<Truth>,
    pub events: HashMap<String, Meta>,
}

impl History {
    /// The states from the one in force when `at` began, to the latest.
    fn since(&self, at: EpochMillis) -> &[Truth] {
        let i = self.truths.partition_point(|t| t.at <= at).saturating_sub(1);
        &self.truths[i..]
    }
}

// ---------------------------------------------------------------------------------- the script

/// One step of a script. Indices pick among what exists when the step runs.
#[derive(Debug, Clone)]
pub enum Op {
    CreateUser {
        dir: u8,
    },
    UpdateUser {
        user: u8,
    },
    Deactivate {
        user: u8,
    },
    Reactivate {
        user: u8,
    },
    DeleteUser {
        user: u8,
    },
    CreateGroup {
        dir: u8,
        name: u8,
    },
    RenameGroup {
        group: u8,
        name: u8,
    },
    DeleteGroup {
        group: u8,
    },
    AddMember {
        user: u8,
        group: u8,
    },
    RemoveMember {
        user: u8,
        group: u8,
    },
    DeleteDirectory {
        dir: u8,
    },
    /// An operator (or the scheduler) asks for a reconcile.
    Reconcile {
        dir: u8,
    },
    /// Let the workers run this many ticks.
    Work {
        ticks: u8,
    },
    /// Move the clock (lets leases and delays run out).
    Sleep {
        secs: u8,
    },
}

pub const NAMES: [&str; 4] = ["Platform Admins", "Engineering", "Staff", "Ops"];

/// How events reach the queue and how invocations behave.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub workers: usize,
    pub batch_max: usize,
    pub crash_rate: f64,
    /// Of the planned crashes, the share that are stalls past the lease instead.
    pub stall_share: f64,
    pub drop_rate: f64,
    pub dup_rate: f64,
    pub latency_ms: u64,
    pub tick_ms: u64,
    /// With real I/O (moto, HTTP): wait this long per tick, and bound settling by wall time.
    pub real_tick: Option<Duration>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            workers: 3,
            batch_max: 6,
            crash_rate: 0.25,
            stall_share: 0.3,
            drop_rate: 0.1,
            dup_rate: 0.15,
            latency_ms: 3,
            tick_ms: 2,
            real_tick: None,
        }
    }
}

/// The processor settings of the simulation: short chunks, leases and delays, so that chunk
/// ends, takeovers, continuations and deferrals all happen in small scripts.
pub fn sim_config(rules: Rules) -> ProcessorConfig {
    let mut c = ProcessorConfig::with_rules(rules);
    c.engine.chunk = Duration::from_millis(1500);
    c.engine.lease_grace = Duration::from_millis(1000);
    c.engine.step_reserve = Duration::from_millis(100);
    c.engine.skip_margin = Duration::from_millis(500);
    c.engine.debounce_max = Duration::from_secs(2);
    c.engine.checkpoint_every = 2;
    c.engine.sweep_page = 3;
    c.engine.max_pending_users = 6;
    c.engine.max_pending_groups = 3;
    c.engine.reconcile_threshold = 4;
    c.reserve = Duration::from_millis(200);
    c.defer_min = Duration::from_millis(700);
    c.defer_max = Duration::from_secs(5);
    c.concurrency = 3;
    c
}

type Invocation = (Pin<Box<dyn Future<Output = ()> + Send>>, Arc<Plan>);

/// The simulated world and its workers.
pub struct Sim<S, C, A> {
    pub clock: ManualClock,
    pub truth: Arc<Mutex<Store>>,
    pub history: Arc<Mutex<History>>,
    pub queue: MemQueue,
    pub state: S,
    pub claims: C,
    pub api: A,
    pub rules: Rules,
    pub config: ProcessorConfig,
    pub knobs: Knobs,
    pub rng: fastrand::Rng,
    pub dirs: Vec<String>,
    pub failures: Arc<Mutex<Vec<String>>>,
    in_flight: Vec<Invocation>,
    /// Events delivered at least once.
    pub delivered: BTreeSet<String>,
    /// Directories with an event that was never delivered.
    pub dropped: BTreeSet<String>,
    pub crashes: usize,
    pub stalls: usize,
    pub invocations: usize,
    /// Times the clock was moved because nothing had moved it for a while (real-time runs).
    pub watchdog_moves: usize,
    pub ticks: u64,
}

impl<S, C, A> Sim<S, C, A>
where
    S: StateStore,
    C: ClaimStore + Clone,
    A: DirectoryApi + Clone,
{
    /// Two directories of two organizations, seeded, with per-organization name rules.
    pub fn new(
        clock: ManualClock,
        truth: Arc<Mutex<Store>>,
        state: S,
        claims: C,
        api: A,
        knobs: Knobs,
        seed: u64,
    ) -> Self {
        let now = clock.now();
        let (a, b) = {
            let mut t = lock(&truth);
            let a = t.seed(
                &SeedSpec::new("Acme")
                    .group("Platform Admins", 2)
                    .group("Staff", 2)
                    .extra_users(1),
                now,
            );
            let b = t.seed(
                &SeedSpec::new("Globex")
                    .group("Engineering", 2)
                    .group("Platform Admins", 1),
                now,
            );
            (a, b)
        };
        let staff = a.groups[1].id.clone();
        let rules = Rules::parse(&format!(
            r#"{{
              "organizations": {{
                "{}": {{"by_group_name": {{"Platform Admins": ["admin-console"]}}}},
                "{}": {{"by_group_name": {{"Engineering": ["deploy"]}}}}
              }},
              "directories": {{"{}": {{"by_group_name": {{"Platform Admins": ["billing"]}}}}}},
              "all_tenants": {{"by_group_id": {{"{staff}": ["beta"]}}}}
            }}"#,
            a.organization_id, b.organization_id, b.directory_id
        ))
        .expect("sim rules");
        let queue = MemQueue::new(clock.clone(), Duration::from_secs(6), 1000);
        let mut sim = Sim {
            config: sim_config(rules.clone()),
            rules,
            clock,
            truth,
            history: Arc::new(Mutex::new(History::default())),
            queue,
            state,
            claims,
            api,
            knobs,
            rng: fastrand::Rng::with_seed(seed),
            dirs: vec![a.directory_id, b.directory_id],
            failures: Arc::new(Mutex::new(Vec::new())),
            in_flight: Vec::new(),
            delivered: BTreeSet::new(),
            dropped: BTreeSet::new(),
            crashes: 0,
            stalls: 0,
            invocations: 0,
            watchdog_moves: 0,
            ticks: 0,
        };
        sim.record(0);
        sim
    }

    /// Snapshot the truth and deliver the events recorded from index `from` on.
    fn record(&mut self, from: usize) -> usize {
        let now = self.clock.now();
        let (events, truth) = {
            let t = lock(&self.truth);
            (t.events()[from..].to_vec(), Truth::of(&t, now))
        };
        {
            let mut h = lock(&self.history);
            h.truths.push(truth);
            for e in &events {
                let data = &e.data;
                let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
                let (directory, user, group) = match e.event.as_str() {
                    "dsync.activated" | "dsync.deleted" => (s(&data["id"]), None, None),
                    "dsync.group.user_added" | "dsync.group.user_removed" => (
                        s(&data["directory_id"]),
                        s(&data["user"]["id"]),
                        s(&data["group"]["id"]),
                    ),
                    k if k.starts_with("dsync.group.") => (s(&data["directory_id"]), None, s(&data["id"])),
                    _ => (s(&data["directory_id"]), s(&data["id"]), None),
                };
                h.events.insert(
                    e.id.clone(),
                    Meta {
                        kind: e.event.clone(),
                        directory: directory.unwrap_or_default(),
                        user,
                        group,
                        created: e.created_at,
                    },
                );
            }
        }
        for e in &events {
            let dir = lock(&self.history)
                .events
                .get(&e.id)
                .map(|m| m.directory.clone())
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&e.to_body()).into_owned();
            let r = self.rng.f64();
            if r < self.knobs.drop_rate {
                self.dropped.insert(dir);
                continue;
            }
            let delay = Duration::from_millis(self.rng.u64(0..1500));
            self.queue.send(body.clone(), Some(&dir), "webhook", delay);
            self.delivered.insert(e.id.clone());
            if r < self.knobs.drop_rate + self.knobs.dup_rate {
                let later = Duration::from_millis(self.rng.u64(0..8000));
                self.queue.send(body, Some(&dir), "webhook", later);
            }
        }
        from + events.len()
    }

    fn pick(&mut self, list: &[String], i: u8) -> Option<String> {
        (!list.is_empty()).then(|| list[usize::from(i) % list.len()].clone())
    }

    pub fn live_dirs(&self) -> Vec<String> {
        let t = lock(&self.truth);
        self.dirs.iter().filter(|d| t.directory(d).is_some()).cloned().collect()
    }

    fn users(&self) -> Vec<String> {
        lock(&self.truth).all_users().map(|u| u.id.clone()).collect()
    }

    fn groups(&self) -> Vec<String> {
        lock(&self.truth).all_groups().map(|g| g.id.clone()).collect()
    }

    /// Apply one script step.
    pub async fn step(&mut self, op: &Op) {
        let from = lock(&self.truth).events().len();
        let now = self.clock.now();
        let dirs = self.live_dirs();
        let users = self.users();
        let groups = self.groups();
        match op {
            Op::CreateUser { dir } => {
                if let Some(d) = self.pick(&dirs, *dir) {
                    let n = self.rng.u32(..);
                    let _ = lock(&self.truth).create_user(&d, &NewUser::new(format!("new{n}@example.com")), now);
                }
            }
            Op::UpdateUser { user } => {
                if let Some(u) = self.pick(&users, *user) {
                    let n = self.rng.u32(..);
                    let update = UserUpdate {
                        first_name: Some(format!("N{n}")),
                        ..Default::default()
                    };
                    let _ = lock(&self.truth).update_user(&u, &update, now);
                }
            }
            Op::Deactivate { user } | Op::Reactivate { user } => {
                if let Some(u) = self.pick(&users, *user) {
                    let state = if matches!(op, Op::Deactivate { .. }) {
                        workos_sandbox::UserState::Inactive
                    } else {
                        workos_sandbox::UserState::Active
                    };
                    let _ = lock(&self.truth).set_user_state(&u, state, now);
                }
            }
            Op::DeleteUser { user } => {
                if let Some(u) = self.pick(&users, *user) {
                    let _ = lock(&self.truth).delete_user(&u, now);
                }
            }
            Op::CreateGroup { dir, name } => {
                if let Some(d) = self.pick(&dirs, *dir) {
                    let _ = lock(&self.truth).create_group(&d, NAMES[usize::from(*name) % NAMES.len()], now);
                }
            }
            Op::RenameGroup { group, name } => {
                if let Some(g) = self.pick(&groups, *group) {
                    let _ = lock(&self.truth).rename_group(&g, NAMES[usize::from(*name) % NAMES.len()], now);
                }
            }
            Op::DeleteGroup { group } => {
                if let Some(g) = self.pick(&groups, *group) {
                    let _ = lock(&self.truth).delete_group(&g, now);
                }
            }
            Op::AddMember { user, group } | Op::RemoveMember { user, group } => {
                if let (Some(u), Some(g)) = (self.pick(&users, *user), self.pick(&groups, *group)) {
                    let mut t = lock(&self.truth);
                    let same_dir =
                        t.user(&u).map(|x| x.directory_id.clone()) == t.group(&g).map(|x| x.directory_id.clone());
                    if same_dir {
                        let _ = if matches!(op, Op::AddMember { .. }) {
                            t.add_member(&u, &g, now)
                        } else {
                            t.remove_member(&u, &g, now)
                        };
                    }
                }
            }
            Op::DeleteDirectory { dir } => {
                // At most one of the two, so the other keeps exercising everything else.
                if dirs.len() == self.dirs.len() {
                    if let Some(d) = self.pick(&dirs, *dir) {
                        let _ = lock(&self.truth).delete_directory(&d, now);
                    }
                }
            }
            Op::Reconcile { dir } => {
                if let Some(d) = self.pick(&self.dirs.clone(), *dir) {
                    let body = dsync::plan::request_body(&d, now);
                    self.queue.send(body, Some(&d), "request", Duration::ZERO);
                }
            }
            Op::Work { ticks } => {
                for _ in 0..u32::from(*ticks) * 20 {
                    self.tick().await;
                }
            }
            Op::Sleep { secs } => self.clock.advance(Duration::from_secs(u64::from(*secs % 8))),
        }
        self.clock.advance(Duration::from_millis(5));
        if lock(&self.truth).events().len() > from {
            self.record(from);
        }
    }

    /// One tick: maybe start invocations, poll each running one once, let time pass.
    pub async fn tick(&mut self) {
        self.ticks += 1;
        while self.in_flight.len() < self.knobs.workers && self.rng.f64() < 0.5 {
            let n = self.rng.usize(1..=self.knobs.batch_max);
            let msgs = self.queue.receive(n);
            if msgs.is_empty() {
                break;
            }
            self.start(msgs);
        }
        let order = {
            let mut o: Vec<usize> = (0..self.in_flight.len()).collect();
            self.rng.shuffle(&mut o);
            o
        };
        let skip: Vec<bool> = order.iter().map(|_| self.rng.f64() < 0.2).collect();
        let mut done = vec![false; self.in_flight.len()];
        {
            let in_flight = &mut self.in_flight;
            std::future::poll_fn(|cx| {
                for (k, &i) in order.iter().enumerate() {
                    if skip[k] {
                        continue;
                    }
                    if let Poll::Ready(()) = in_flight[i].0.as_mut().poll(cx) {
                        done[i] = true;
                    }
                }
                Poll::Ready(())
            })
            .await;
        }
        let mut idx = 0;
        self.in_flight.retain(|(_, plan)| {
            let keep = !done[idx] && !plan.crashed();
            idx += 1;
            keep
        });
        self.clock.advance(Duration::from_millis(self.knobs.tick_ms));
        // Let real I/O (moto, HTTP) make progress.
        match self.knobs.real_tick {
            Some(d) if !self.in_flight.is_empty() => tokio::time::sleep(d).await,
            _ => tokio::task::yield_now().await,
        }
    }

    fn start(&mut self, msgs: Vec<dsync::adapters::memory::MemMessage>) {
        self.invocations += 1;
        let crash_at = (self.rng.f64() < self.knobs.crash_rate).then(|| self.rng.i64(1..60));
        if crash_at.is_some() {
            self.crashes += 1;
        }
        let stall = (self.rng.f64() < self.knobs.stall_share).then(|| Duration::from_millis(self.rng.u64(1000..6000)));
        if stall.is_some() && crash_at.is_some() {
            self.stalls += 1;
        }
        let plan = Plan::with_stall(
            self.clock.clone(),
            crash_at,
            self.rng.bool(),
            self.knobs.latency_ms,
            stall,
        );
        let checker = self.checker();
        let processor = Processor::new(
            Crashy {
                inner: self.api.clone(),
                plan: plan.clone(),
            },
            Crashy {
                inner: Checked {
                    inner: self.claims.clone(),
                    check: checker,
                },
                plan: plan.clone(),
            },
            Crashy {
                inner: self.state.clone(),
                plan: plan.clone(),
            },
            Crashy {
                inner: self.queue.clone(),
                plan: plan.clone(),
            },
            self.clock.clone(),
            self.config.clone(),
        );
        let queue = self.queue.clone();
        let deadline = self.clock.now().saturating_add(Duration::from_secs(4));
        let fut = async move {
            let records: Vec<Record> = msgs.iter().map(MemMessage::record).collect();
            let outcomes = processor.process_batch(&records, deadline).await;
            for (m, o) in msgs.iter().zip(outcomes) {
                match o {
                    RecordOutcome::Retry { delay: Some(d), .. } => {
                        queue.set_visibility(&m.receipt, d);
                    }
                    RecordOutcome::Retry { delay: None, .. } => {}
                    _ => {
                        queue.delete(&m.receipt);
                    }
                }
            }
        };
        self.in_flight.push((Box::pin(fut), plan));
    }

    /// The completion oracle: what a COMPLETED event concerns is stored as WorkOS had it at some
    /// moment since the event was created.
    fn checker(&self) -> Check {
        let history = self.history.clone();
        let failures = self.failures.clone();
        let state = self.state.clone();
        Arc::new(move |event_id: String| {
            let (meta, truths) = {
                let h = lock(&history);
                match h.events.get(&event_id).cloned() {
                    Some(meta) => {
                        let truths = h.since(meta.created).to_vec();
                        (Some(meta), truths)
                    }
                    None => (None, Vec::new()),
                }
            };
            let failures = failures.clone();
            let state = state.clone();
            Box::pin(async move {
                let Some(meta) = meta else { return };
                if let Some(p) = check_event(&state, &meta, &truths).await {
                    lock(&failures).push(format!("event {event_id} ({}) COMPLETED too early: {p}", meta.kind));
                }
            })
        })
    }

    /// Deliver everything, ask for reconciles where events were dropped, and run until the queue
    /// is empty. `Err` if it does not settle within `max_ticks`.
    pub async fn settle(&mut self, max_ticks: u64) -> Result<(), String> {
        for d in std::mem::take(&mut self.dropped) {
            let body = dsync::plan::request_body(&d, self.clock.now());
            self.queue.send(body, Some(&d), "request", Duration::ZERO);
        }
        self.run_until_empty(max_ticks).await?;
        // The watchdog: a continuation for every directory, so no job is left behind.
        for d in self.dirs.clone() {
            self.queue
                .continue_later(&d, Duration::ZERO)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.run_until_empty(max_ticks).await
    }

    async fn run_until_empty(&mut self, max_ticks: u64) -> Result<(), String> {
        let start = self.ticks;
        let wall = std::time::Instant::now();
        // Real time passes even when no invocation makes a call (one waits on a slow request
        // while the others are stalled): after a while without any, the clock moves on.
        let mut still = (self.clock.now(), std::time::Instant::now());
        loop {
            if self.knobs.real_tick.is_some() {
                if self.clock.now() != still.0 {
                    still = (self.clock.now(), std::time::Instant::now());
                } else if still.1.elapsed() > Duration::from_secs(2) {
                    self.clock.advance(Duration::from_millis(250));
                    self.watchdog_moves += 1;
                    still = (self.clock.now(), std::time::Instant::now());
                }
            }
            if self.queue.is_empty() && self.in_flight.is_empty() {
                return Ok(());
            }
            let over = match self.knobs.real_tick {
                Some(_) => wall.elapsed() > Duration::from_secs(180),
                None => self.ticks - start > max_ticks,
            };
            if over {
                let mut dump = String::new();
                for d in &self.dirs {
                    let f = self.state.fence(d).await.ok().flatten();
                    let c = self.state.ctl(d).await.ok();
                    dump.push_str(&format!("\n  {d}: fence {f:?}\n  ctl {c:?}"));
                }
                for (i, (_, plan)) in self.in_flight.iter().enumerate() {
                    dump.push_str(&format!("\n  invocation {i}: {}", plan.describe()));
                }
                return Err(format!(
                    "did not settle within {max_ticks} ticks: {} messages left, {} running, now {:?}{dump}",
                    self.queue.len(),
                    self.in_flight.len(),
                    self.clock.now()
                ));
            }
            let stalled: Vec<Option<EpochMillis>> = self.in_flight.iter().map(|(_, p)| p.stalled_until()).collect();
            if stalled.iter().all(Option::is_some) {
                let mut next = stalled.into_iter().flatten().min();
                if let Some(t) = self.queue.next_visible() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                if let Some(t) = next {
                    if t > self.clock.now() {
                        self.clock.set(t);
                    }
                }
            }
            self.tick().await;
        }
    }

    /// The final oracle. Returns every difference found.
    pub async fn verify(&self) -> Vec<String> {
        let mut problems = lock(&self.failures).clone();
        let truth = Truth::of(&lock(&self.truth), self.clock.now());
        let reader = EntitlementReader::new(self.state.clone());
        let everyone: BTreeSet<(String, String)> = {
            let h = lock(&self.history);
            h.truths
                .iter()
                .flat_map(|t| t.users.iter().map(|(u, (d, _))| (d.clone(), u.clone())))
                .collect()
        };
        for (dir, uid) in everyone {
            let got = match reader.user(&dir, &uid).await {
                Ok(l) => l,
                Err(e) => {
                    problems.push(format!("reading {uid}: {e}"));
                    continue;
                }
            };
            let live = truth.directories.contains_key(&dir) && truth.users.contains_key(&uid);
            match (&got, live) {
                (Lookup::NotFound, false) => {}
                (Lookup::Found(v), true) => {
                    let want = truth.entitlements(&self.rules, &uid);
                    if !v.is_current() {
                        problems.push(format!("{uid} not current at rest: {:?}", v.stale));
                    }
                    if v.entitlements != want {
                        problems.push(format!(
                            "{uid}: entitlements {:?}, WorkOS implies {:?}",
                            v.entitlements, want
                        ));
                    }
                    if v.state.as_ref() != Some(&truth.state(&uid)) {
                        problems.push(format!(
                            "{uid}: state {:?}, WorkOS has {:?}",
                            v.state,
                            truth.state(&uid)
                        ));
                    }
                    let groups: BTreeSet<&str> = v.groups.iter().map(String::as_str).collect();
                    let want_groups: BTreeSet<&str> = truth
                        .members
                        .iter()
                        .filter(|(u, _)| *u == uid)
                        .map(|(_, g)| g.as_str())
                        .collect();
                    if groups != want_groups {
                        problems.push(format!("{uid}: groups {groups:?}, WorkOS has {want_groups:?}"));
                    }
                }
                (other, live) => problems.push(format!("{uid} in {dir}: {other:?}, live in WorkOS: {live}")),
            }
        }
        for d in &self.dirs {
            if !truth.directories.contains_key(d) {
                match self.state.users_page(d, None, 10).await {
                    Ok(p) if p.items.is_empty() => {}
                    Ok(p) => problems.push(format!("deleted directory {d} still stores {} users", p.items.len())),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        // At rest nothing is left pending: every request handed to a lease holder was done.
        for d in &self.dirs {
            match self.state.ctl(d).await {
                Ok(c) if c.deleted_at.is_some() => {}
                Ok(c) => {
                    // A pending user whose request a read already reflects is only left to tidy.
                    let mut users = 0;
                    for u in c.pending_users.keys() {
                        let applied = match self.state.users(d, std::slice::from_ref(u)).await {
                            Ok(v) => v.first().and_then(|r| r.value.applied_at),
                            Err(e) => {
                                problems.push(e.to_string());
                                None
                            }
                        };
                        if c.user_pending(u, applied) {
                            users += 1;
                        }
                    }
                    if users > 0
                        || c.pending_users_more
                        || !c.pending_groups.is_empty()
                        || c.groups_overflowing()
                        || c.full.is_some()
                        || c.propagating
                            .values()
                            .any(|since| c.full_applied_at.is_none_or(|f| *since >= f))
                    {
                        problems.push(format!(
                            "{d} at rest with work pending: {users} users (more: {}), {} groups (overflow {:?}), \
                             full {:?}, groups still marked changing: {:?} (full applied from {:?})",
                            c.pending_users_more,
                            c.pending_groups.len(),
                            c.groups_overflow,
                            c.full,
                            c.propagating,
                            c.full_applied_at
                        ));
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        let dead = self.queue.dead_letters();
        if !dead.is_empty() {
            problems.push(format!("{} messages dead-lettered", dead.len()));
        }
        problems
    }
}

/// Is what `meta` concerns stored as one of `truths` had it?
async fn check_event<S: StateStore>(state: &S, meta: &Meta, truths: &[Truth]) -> Option<String> {
    let dir = &meta.directory;
    let ctl = state.ctl(dir).await.ok()?;
    if meta.kind == "dsync.deleted" {
        return ctl.deleted_at.is_none().then(|| "directory not tombstoned".to_string());
    }
    if ctl.deleted_at.is_some() {
        return None;
    }
    let users: Vec<UserRecord> = match &meta.user {
        Some(u) => state
            .users(dir, std::slice::from_ref(u))
            .await
            .ok()?
            .into_iter()
            .map(|v| v.value)
            .collect(),
        None => {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let p = state.users_page(dir, after.as_deref(), 100).await.ok()?;
                all.extend(p.items.into_iter().map(|v| v.value));
                match p.after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            all
        }
    };
    if let Some(u) = &meta.user {
        if users.is_empty() {
            let ever = truths.iter().any(|t| !t.users.contains_key(u));
            if !ever {
                return Some(format!("user {u} not stored"));
            }
        }
    }
    let groups_of_dir: BTreeSet<String> = truths
        .iter()
        .flat_map(|t| t.groups.iter().filter(|(_, (d, _))| d == dir).map(|(g, _)| g.clone()))
        .collect();
    for u in &users {
        let stored_state = u.state.clone().unwrap_or(UserState::Other("unread".into()));
        let check_state = meta.user.is_some() || meta.group.is_none();
        if check_state && u.state.is_some() && !truths.iter().any(|t| t.state(&u.user_id) == stored_state) {
            return Some(format!("user {} state {:?}", u.user_id, stored_state));
        }
        let pairs: Vec<&String> = match &meta.group {
            Some(g) if meta.user.is_none() => vec![g],
            _ => groups_of_dir.iter().chain(u.groups.keys()).collect(),
        };
        for g in pairs {
            let stored = u.is_member(g);
            if !truths
                .iter()
                .any(|t| t.members.contains(&(u.user_id.clone(), g.clone())) == stored)
            {
                return Some(format!("membership ({}, {g}) stored as {stored}", u.user_id));
            }
        }
    }
    if let (Some(g), None) = (&meta.group, &meta.user) {
        let stored = state
            .groups(dir)
            .await
            .ok()?
            .into_iter()
            .find(|x| &x.value.group_id == g)
            .map(|x| x.value.name);
        let stored = stored.flatten();
        if !truths.iter().any(|t| t.groups.get(g).map(|(_, n)| n.clone()) == stored) {
            return Some(format!("group {g} name {stored:?}"));
        }
    }
    None
}
