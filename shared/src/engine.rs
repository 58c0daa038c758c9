//! Directory work: everything that reads WorkOS and writes the directory picture, one directory at
//! a time, under that directory's lease.
//!
//! Invariants (tested by `tests/tests/convergence.rs` with random scripts, crashes at arbitrary
//! points and several workers, and by the conformance suite for the store semantics they rely on):
//! 1. **One reader per directory.** Every WorkOS read and every fact write for a directory happens
//!    under its lease (the fence record). A holder whose lease was taken over, or whose directory
//!    was deleted, writes nothing: every commit checks the fence's version atomically.
//! 2. **Older never overwrites newer.** Facts are observations stamped with the start of the read
//!    that made them; each record keeps the newest per fact (see `model`), absences included.
//! 3. **Applied means applied.** A read's "applied" mark (`applied_at` of a user,
//!    `members_applied_at` of a group, `full_applied_at` of the directory) is written in the same
//!    atomic write as the last of its effects (a user), or after all of them (a group, a run), so
//!    a mark never claims a read whose facts or entitlements are missing. Events are completed only
//!    from these marks (`processor`).
//! 4. **Removal only after a complete listing.** A reconcile removes what WorkOS did not list only
//!    in its sweep phases, after every listing ended; each removal is itself fenced by the listing's
//!    start, so what a newer read added survives.
//! 5. **A deleted directory never comes back.** Its fence carries a tombstone that fails every later
//!    commit; its control record carries it too, and the gate returns nothing for it.
//! 6. **Bounded work.** A chunk stops before its time is up and checkpoints; long jobs continue in
//!    later chunks (a continuation message), resuming from the checkpoint after a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, EpochMillis};
use crate::directory::{ApiError, CallBudget, DirGroup, DirUser, DirectoryApi, Listing, UserState};
use crate::model::{fingerprint, Derive, GroupNames, GroupRecord, UserRecord};
use crate::ports::queue::{WorkQueue, WorkQueueError};
use crate::ports::state::*;
use crate::ports::StoreError;
use crate::rules::{Rules, Tenant};

/// How the engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub rules: Arc<Rules>,
    /// Longest time one chunk of work may take (an invocation does at most one chunk per
    /// directory). Keep it at most half the function timeout.
    pub chunk: Duration,
    /// How long a lease outlives its chunk's end (covers a slow last call).
    pub lease_grace: Duration,
    /// No new step starts when less than this is left in the chunk.
    pub step_reserve: Duration,
    /// A read must begin this long after an event's `created_at` to reflect it by clock.
    pub skip_margin: Duration,
    /// A requested full reconcile waits for events to stop arriving, but no longer than this.
    pub debounce_max: Duration,
    /// Pending per-object work beyond these sizes becomes one full reconcile.
    pub max_pending_users: usize,
    pub max_pending_groups: usize,
    /// With no completed full read yet, this many user events at once ask for one.
    pub reconcile_threshold: usize,
    /// Checkpoint a job at least every this many steps.
    pub checkpoint_every: u32,
    /// Records per stored page read by sweeps.
    pub sweep_page: usize,
    /// How long a directory's work waits after a failed chunk (WorkOS down, say).
    pub retry_after_failure: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rules: Arc::new(Rules::default()),
            chunk: Duration::from_secs(25),
            lease_grace: Duration::from_secs(20),
            step_reserve: Duration::from_secs(3),
            skip_margin: Duration::from_secs(5),
            debounce_max: Duration::from_secs(60),
            max_pending_users: 256,
            max_pending_groups: 64,
            reconcile_threshold: 5,
            checkpoint_every: 10,
            sweep_page: 200,
            retry_after_failure: Duration::from_secs(30),
        }
    }
}

/// What a directory was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Re-read a user and its groups.
    User(String),
    /// Re-read a group and its members.
    Group(String),
    /// Re-read the whole directory, in a run that begins no earlier than `after`.
    Full { after: EpochMillis },
    /// The directory was deleted in WorkOS.
    Purge,
}

/// When the events that asked for a [`Engine::run`] came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Asked {
    /// The latest `created_at + skip_margin` among them: a full read begun after it reflects
    /// all of them by clock (so a burst can wait for one read).
    pub hint: Option<EpochMillis>,
    /// When the latest of them was queued: a read begun after it reflects all of them.
    pub received: Option<EpochMillis>,
}

impl Asked {
    /// A read that begins after this time reflects all of them (after the latest queueing, or
    /// at the latest `created_at + margin`): the time their user requests are pending from. It
    /// is the same on every delivery of the same events, so a redelivery never pushes it later.
    pub fn since(&self) -> Option<EpochMillis> {
        let by_clock = self.hint.map(|h| h.saturating_sub(Duration::from_millis(1)));
        match (self.received, by_clock) {
            (Some(r), Some(h)) => Some(r.min(h)),
            (r, h) => r.or(h),
        }
    }
}

/// What one call to [`Engine::run`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// This worker held the lease and worked.
    Worked(ChunkReport),
    /// Another worker holds the lease; the requests were handed to it (the control record).
    Busy,
    /// The directory is deleted and purged: nothing to do.
    Deleted,
    /// Nothing was asked and nothing is pending.
    Idle,
    /// The chunk failed part-way (WorkOS unavailable, the lease lost, ...); what it finished is
    /// kept, the rest is handed back and a continuation is queued.
    Failed { error: String, report: ChunkReport },
}

/// What a chunk did and spent (its WorkOS calls are counted here once, however many events it
/// applied).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkReport {
    pub id: String,
    pub workos_calls: u32,
    pub throttled: u32,
    pub read_units: u64,
    pub write_units: u64,
    pub users_refreshed: u32,
    pub finished: Vec<RunSummary>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lost the directory's lease (or it was deleted) during the chunk")]
    Fenced,
    #[error(transparent)]
    Queue(#[from] WorkQueueError),
    #[error("stored job is inconsistent: {0}")]
    BadJob(String),
}

impl From<CommitError> for EngineError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Fenced => EngineError::Fenced,
            // Only the lease holder writes records, so a version conflict means someone wrote
            // without the lease: stop rather than guess.
            CommitError::Conflict => EngineError::Fenced,
            CommitError::Store(s) => EngineError::Store(s),
        }
    }
}

/// The engine, generic over its ports.
pub struct Engine<A, S, Q, K> {
    api: A,
    store: S,
    queue: Q,
    clock: K,
    cfg: EngineConfig,
    rules_fp: String,
}

impl<A, S, Q, K> std::fmt::Debug for Engine<A, S, Q, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl<A: DirectoryApi, S: StateStore, Q: WorkQueue, K: Clock> Engine<A, S, Q, K> {
    pub fn new(api: A, store: S, queue: Q, clock: K, cfg: EngineConfig) -> Self {
        let rules_fp = cfg.rules.fingerprint();
        Engine {
            api,
            store,
            queue,
            clock,
            cfg,
            rules_fp,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    pub fn api(&self) -> &A {
        &self.api
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Work on a directory for at most one chunk, ending before `deadline`: take its lease (or
    /// hand the requests to whoever holds it), do what is pending, checkpoint, release, and queue
    /// a continuation if work remains.
    pub async fn run(
        &self,
        dir: &str,
        requests: &[Request],
        asked: &Asked,
        deadline: EpochMillis,
    ) -> Result<Ran, EngineError> {
        let now = self.clock.now();
        let chunk_end = now.saturating_add(self.cfg.chunk).min(deadline);
        let fence = self.store.fence(dir).await?;
        // Requests queued before the running job began are reflected by it when it ends (a
        // reconcile reflects every object, a group job its group): no need to read them again.
        let running = fence.as_ref().and_then(|f| f.value.job.as_ref());
        let kept: Vec<Request>;
        let requests = match (running, asked.received) {
            (Some(job), Some(received)) if received < EpochMillis(job.started_at) => {
                kept = requests
                    .iter()
                    .filter(|r| match (&job.kind, r) {
                        // User requests stay: they go to the control record, where the gate sees
                        // them pending until the run is applied (the holder does not read them
                        // again: `merge_ctl`).
                        (JobKind::Reconcile, Request::Group(_)) => false,
                        (JobKind::Group { group_id }, Request::Group(g)) => g != group_id,
                        _ => true,
                    })
                    .cloned()
                    .collect();
                kept.as_slice()
            }
            _ => requests,
        };
        if let Some(f) = &fence {
            if f.value.deleted_at.is_some() && f.value.job.is_none() {
                return Ok(Ran::Deleted);
            }
            if f.value.owner.is_some() && f.value.lease_until > now {
                self.absorb(dir, requests, asked, None).await?;
                return Ok(Ran::Busy);
            }
        }
        if requests.is_empty() && fence.as_ref().is_none_or(|f| f.value.job.is_none()) {
            let ctl = self.store.ctl(dir).await?;
            if !ctl.pending_users.keys().any(|u| ctl.user_pending(u, None))
                && !ctl.pending_users_more
                && ctl.pending_groups.is_empty()
                && ctl.propagating.is_empty()
                && ctl.full.is_none()
                && !ctl.groups_overflowing()
                && ctl.full_applied_at.is_some()
            {
                return Ok(Ran::Idle);
            }
        }
        let id = format!("c{:x}{:08x}", now.0, fastrand::u32(..));
        let mut lease = fence.as_ref().map(|f| f.value.clone()).unwrap_or_default();
        lease.epoch += 1;
        lease.owner = Some(id.clone());
        lease.lease_until = chunk_end.saturating_add(self.cfg.lease_grace);
        let Some(version) = self
            .store
            .put_fence(dir, &lease, fence.as_ref().map(|f| f.version))
            .await?
        else {
            self.absorb(dir, requests, asked, None).await?;
            return Ok(Ran::Busy);
        };
        self.api.pace_from(dir, lease.pace_next);
        let meter = Meter::new();
        let mut chunk = Chunk {
            e: self,
            store: self.store.metered(meter.clone()),
            dir: dir.to_string(),
            fence: lease,
            version,
            budget: CallBudget::until(chunk_end),
            chunk_end,
            tenant_org: None,
            groups: BTreeMap::new(),
            users: BTreeSet::new(),
            pending_groups: BTreeSet::new(),
            full: None,
            report: ChunkReport {
                id: id.clone(),
                ..Default::default()
            },
            steps_since_checkpoint: 0,
            seen_cache: None,
            deleted_now: false,
            meter: meter.clone(),
            started: now,
            job_chunk_counted: false,
            groups_loaded: false,
            propagating: BTreeMap::new(),
            users_later: false,
            asked: *asked,
        };
        let mut result = chunk.work(requests).await;
        if let Err(EngineError::BadJob(why)) = &result {
            // A job whose stored progress does not add up (a holder that lost its lease wrote
            // late, say) would fail every chunk forever: drop it and start that work afresh
            // under a new run id, which late writes of the old one cannot touch.
            let dropped = match chunk.fence.job.take() {
                Some(j) if j.kind == JobKind::Purge => {
                    chunk.fence.job = Some(j);
                    None
                }
                other => other,
            };
            if let Some(j) = dropped {
                tracing::error!(directory_id = %dir, run = %j.id, error = %why, "stored job inconsistent; started again");
                match j.kind {
                    JobKind::Reconcile => chunk.want_full(now),
                    JobKind::Group { group_id } => {
                        chunk.pending_groups.insert(group_id);
                    }
                    JobKind::Purge => {}
                }
                result = Ok(());
            }
        }
        let outcome = chunk.finish(result.is_ok()).await;
        let mut report = chunk.report.clone();
        report.workos_calls = chunk.budget.calls();
        report.throttled = chunk.budget.throttled();
        report.read_units = meter.read_units();
        report.write_units = meter.write_units();
        tracing::info!(
            directory_id = %dir,
            chunk = %id,
            workos_calls = report.workos_calls,
            throttled = report.throttled,
            read_units = report.read_units,
            write_units = report.write_units,
            users_refreshed = report.users_refreshed,
            job = chunk.fence.job.as_ref().map(|j| j.id.as_str()).unwrap_or(""),
            "chunk done"
        );
        outcome?;
        match result {
            Ok(()) => Ok(Ran::Worked(report)),
            Err(e) => {
                tracing::warn!(directory_id = %dir, chunk = %id, error = %e, "chunk failed; its work continues later");
                Ok(Ran::Failed {
                    error: e.to_string(),
                    report,
                })
            }
        }
    }

    /// Hand requests to the lease holder through the control record.
    async fn absorb(
        &self,
        dir: &str,
        requests: &[Request],
        asked: &Asked,
        ctl: Option<&Ctl>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let hint = asked.hint;
        let mut a = Absorb {
            at: asked.since().map_or(now, |t| t.min(now)),
            ..Absorb::default()
        };
        for r in requests {
            match r {
                Request::User(u) => a.users.push(u.clone()),
                Request::Group(g) => a.groups.push(g.clone()),
                Request::Full { after } => {
                    let f = a.full.get_or_insert(FullRequest {
                        first: now,
                        after: *after,
                    });
                    f.after = f.after.max(*after);
                }
                Request::Purge => {}
            }
        }
        // Pending users are items of their own: always recorded (the gate reads them; the
        // holder escalates to a full read when they are many). Pending groups live in the
        // control record, which stays far below DynamoDB's 400 KB item limit: past the bound a
        // reconcile is asked for instead.
        let pending_groups = ctl.map_or(0, |c| c.pending_groups.len());
        let overflow = a.groups.len() + pending_groups > self.cfg.max_pending_groups;
        if overflow {
            // Not recorded one by one: recorded as an overflow (first, to fail closed), which
            // keeps every group's members unknown to the gate until the full read is applied.
            self.store
                .change_ctl(dir, &CtlChange::GroupsOverflow { since: a.at })
                .await?;
            a.groups.clear();
            let after = hint.unwrap_or(now).max(now);
            let f = a.full.get_or_insert(FullRequest { first: now, after });
            f.after = f.after.max(after);
        }
        if a.users.is_empty() && a.groups.is_empty() && a.full.is_none() {
            return Ok(());
        }
        a.users.sort();
        a.users.dedup();
        a.groups.sort();
        a.groups.dedup();
        self.store.absorb(dir, &a).await
    }
}

/// Fingerprints of one listed container, kept for a sweep.
struct SeenSet {
    container: String,
    started: EpochMillis,
    complete: bool,
    hashes: HashSet<u64>,
}

/// One chunk of work on one directory, holding its lease.
struct Chunk<'e, A, S, Q, K> {
    e: &'e Engine<A, S, Q, K>,
    store: S,
    dir: String,
    fence: Fence,
    version: u64,
    budget: CallBudget,
    chunk_end: EpochMillis,
    tenant_org: Option<String>,
    groups: BTreeMap<String, Versioned<GroupRecord>>,
    users: BTreeSet<String>,
    pending_groups: BTreeSet<String>,
    full: Option<FullRequest>,
    report: ChunkReport,
    steps_since_checkpoint: u32,
    seen_cache: Option<SeenSet>,
    deleted_now: bool,
    meter: Arc<Meter>,
    started: EpochMillis,
    job_chunk_counted: bool,
    groups_loaded: bool,
    /// Groups whose change is still being carried to their members (mirrors the control record),
    /// with the newest mark this holder set or read: it clears a mark only up to that, so a
    /// holder that lost its lease and clears late cannot remove a newer holder's mark.
    propagating: BTreeMap<String, EpochMillis>,
    /// Pending users asked for in this very millisecond: a read must begin after it, so they
    /// wait for a continuation a millisecond on.
    users_later: bool,
    /// When the events that asked for this work came to exist (`asked.hint`: a full read begun
    /// after it reflects all of them by clock).
    asked: Asked,
}

/// Names from the group cache.
struct Names<'a>(&'a BTreeMap<String, Versioned<GroupRecord>>);

impl GroupNames for Names<'_> {
    fn name(&self, gid: &str) -> Option<&str> {
        self.0.get(gid).and_then(|g| g.value.name.as_deref())
    }
}

/// A user's record with the version it was read at, and whether it was stored.
struct Loaded {
    before: Option<Versioned<UserRecord>>,
    rec: UserRecord,
}

impl Loaded {
    fn new(before: Option<Versioned<UserRecord>>, uid: &str) -> Self {
        let rec = before
            .as_ref()
            .map_or_else(|| UserRecord::new(uid), |v| v.value.clone());
        Loaded { before, rec }
    }
    fn changed(&self) -> bool {
        self.before.as_ref().is_none_or(|b| b.value != self.rec)
    }
}

impl<A: DirectoryApi, S: StateStore, Q: WorkQueue, K: Clock> Chunk<'_, A, S, Q, K> {
    fn now(&self) -> EpochMillis {
        self.e.clock.now()
    }

    /// Is there time for another step? (A chunk shorter than a few step reserves still gets
    /// a quarter of itself for each step, so a short invocation does something.)
    fn time_left(&self) -> bool {
        let reserve = self
            .e
            .cfg
            .step_reserve
            .min(self.chunk_end.remaining_from(self.started) / 4);
        self.now().saturating_add(reserve) < self.chunk_end
    }

    async fn work(&mut self, requests: &[Request]) -> Result<(), EngineError> {
        let ctl = self.store.ctl(&self.dir).await?;
        self.tenant_org = ctl.organization_id.clone();
        if self.fence.deleted_at.is_some() || ctl.deleted_at.is_some() || requests.contains(&Request::Purge) {
            // A deleted directory only gets purged, whatever else was asked.
            self.tombstone().await?;
            while self.time_left() && self.fence.job.is_some() {
                self.job_step().await?;
            }
            return Ok(());
        }
        // This worker's own user requests go through the control record like anyone's: the gate
        // sees them pending, and they leave it only once a read that reflects them is applied.
        let mut ctl = ctl;
        let own: Vec<Request> = requests
            .iter()
            .filter(|r| matches!(r, Request::User(_)))
            .cloned()
            .collect();
        if !own.is_empty() {
            self.e.absorb(&self.dir, &own, &self.asked, Some(&ctl)).await?;
            ctl = self.store.ctl(&self.dir).await?;
        }
        for r in requests {
            match r {
                Request::User(_) => {}
                Request::Group(g) => {
                    self.pending_groups.insert(g.clone());
                }
                Request::Full { after } => self.want_full(*after),
                Request::Purge => {}
            }
        }
        self.merge_ctl(&ctl);
        if self.fence.job.is_none() && self.full.is_none() {
            // With no job running, nobody is carrying a change: a group still marked changing
            // was left by a holder that stopped (or lost its lease) part-way. Read it again; its
            // job clears the mark.
            let full = ctl.full_applied_at;
            self.pending_groups.extend(
                ctl.propagating
                    .iter()
                    .filter(|(_, since)| full.is_none_or(|f| **since >= f))
                    .map(|(g, _)| g.clone()),
            );
        }
        if let Some(full) = ctl.full_applied_at {
            // Marks a complete read that began later made moot (left by a holder that lost its
            // lease, say): tidy them.
            for (g, since) in &ctl.propagating {
                if *since < full {
                    self.store
                        .change_ctl(
                            &self.dir,
                            &CtlChange::Propagated {
                                group_id: g.clone(),
                                upto: *since,
                            },
                        )
                        .await?;
                    self.propagating.remove(g);
                }
            }
            // Left behind by a run that stopped between applying and tidying: tidy now.
            let upto = full.saturating_sub(Duration::from_millis(1));
            let tidy: Vec<(String, EpochMillis)> = ctl
                .pending_users
                .iter()
                .filter(|(_, t)| **t <= upto)
                .map(|(u, _)| (u.clone(), upto))
                .collect();
            if !tidy.is_empty() {
                self.store.drain(&self.dir, &tidy, &[]).await?;
            }
        }
        if !self.deleted_now && ctl.full_applied_at.is_none() && self.fence.job.is_none() {
            // Never read in full: the first complete read is due (an initial sync).
            let after = self.asked.hint.unwrap_or(self.now());
            self.want_full(after);
        }
        self.escalate(&ctl).await?;
        let mut last_ctl_read = self.now();
        while self.time_left() {
            if self.fence.job.as_ref().is_some_and(|j| j.kind == JobKind::Purge) {
                self.job_step().await?;
                continue;
            }
            if self.tenant_org.is_none() {
                self.read_directory().await?;
                continue;
            }
            if !self.groups_loaded
                && (!self.users.is_empty()
                    || self.fence.job.is_some()
                    || !self.pending_groups.is_empty()
                    || self.full.is_some())
            {
                self.groups = self
                    .store
                    .groups(&self.dir)
                    .await?
                    .into_iter()
                    .map(|g| (g.value.group_id.clone(), g))
                    .collect();
                self.groups_loaded = true;
            }
            if let Some(uid) = self.users.pop_first() {
                // Requests made before this read began are reflected by it.
                let before = self.now().saturating_sub(Duration::from_millis(1));
                self.refresh_user(&uid).await?;
                self.store.drain(&self.dir, &[(uid, before)], &[]).await?;
                self.report.users_refreshed += 1;
                continue;
            }
            if self.fence.job.is_some() {
                self.job_step().await?;
                if self.now().saturating_sub(Duration::from_secs(2)) > last_ctl_read {
                    // Pick up per-object events that arrived meanwhile: they go before the job.
                    let ctl = self.store.ctl(&self.dir).await?;
                    self.merge_ctl(&ctl);
                    self.escalate(&ctl).await?;
                    last_ctl_read = self.now();
                }
                continue;
            }
            // A full read due reflects the groups asked for: they wait for it.
            if let Some(gid) = self.full.is_none().then(|| self.pending_groups.pop_first()).flatten() {
                self.start_job(JobKind::Group { group_id: gid.clone() }).await?;
                self.store.drain(&self.dir, &[], std::slice::from_ref(&gid)).await?;
                continue;
            }
            if let Some(f) = self.full {
                let now = self.now();
                if now >= f.after || now >= f.first.saturating_add(self.e.cfg.debounce_max) {
                    // The groups asked for so far (read before the run begins) are reflected by
                    // it: no group job for them. (Users wait in the control record for the
                    // run to be applied: the gate reads them.)
                    let asked = self.store.ctl(&self.dir).await?.pending_groups;
                    // Kept until the job is stored: a holder that lost its lease must hand the
                    // request back (`finish`), not drop it.
                    let due = self.full.take();
                    if let Err(e) = self.start_job(JobKind::Reconcile).await {
                        self.full = due;
                        return Err(e);
                    }
                    self.store
                        .change_ctl(&self.dir, &CtlChange::ClearFull { upto: now })
                        .await?;
                    let covered: BTreeSet<String> = asked
                        .into_iter()
                        .chain(std::mem::take(&mut self.pending_groups))
                        .collect();
                    // Their members stay unknown to the gate until the run has listed the group
                    // (the mark moves from "pending" to "changing" before the pending one goes).
                    for g in &covered {
                        self.store
                            .change_ctl(
                                &self.dir,
                                &CtlChange::Propagating {
                                    group_id: g.clone(),
                                    since: now,
                                },
                            )
                            .await?;
                        self.mark_known(g, now);
                    }
                    if !covered.is_empty() {
                        let covered: Vec<String> = covered.into_iter().collect();
                        self.store.drain(&self.dir, &[], &covered).await?;
                    }
                    continue;
                }
            }
            break;
        }
        Ok(())
    }

    /// A group mark this holder set or read (the newest one wins, as in the store).
    fn mark_known(&mut self, gid: &str, since: EpochMillis) {
        let e = self.propagating.entry(gid.to_string()).or_insert(since);
        *e = (*e).max(since);
    }

    fn want_full(&mut self, after: EpochMillis) {
        let now = self.now();
        let f = self.full.get_or_insert(FullRequest { first: now, after });
        f.after = f.after.max(after);
    }

    fn merge_ctl(&mut self, ctl: &Ctl) {
        for (g, since) in &ctl.propagating {
            self.mark_known(g, *since);
        }
        if let Some(f) = ctl.full {
            let mine = self.full.get_or_insert(f);
            mine.first = mine.first.min(f.first);
            mine.after = mine.after.max(f.after);
        }
        // Group events recorded only as an overflow are reflected by a full read that begins
        // after them: a running reconcile that began later will do; otherwise one is due (the
        // request that came with the overflow may have been lost with a crash).
        if let Some(since) = ctl.groups_overflow.filter(|_| ctl.groups_overflowing()) {
            let covered = matches!(&self.fence.job,
                Some(j) if j.kind == JobKind::Reconcile && EpochMillis(j.started_at) > since);
            if !covered {
                self.want_full(since.saturating_add(Duration::from_millis(1)));
            }
        }
        if self.full.is_none() {
            // (With a full read due, it covers the groups: they are drained when it begins.)
            self.pending_groups.extend(ctl.pending_groups.iter().cloned());
        }
        // Pending users a directory-wide read will reflect need no read of their own: all of
        // them while a full read is due (it begins later), those asked before the running
        // reconcile began, those an applied full read already reflects. They stay in the control
        // record (the gate keeps them pending) until that read is applied.
        if self.full.is_none() {
            let running = match &self.fence.job {
                Some(j) if j.kind == JobKind::Reconcile => Some(EpochMillis(j.started_at)),
                _ => None,
            };
            let now = self.now();
            for (u, t) in &ctl.pending_users {
                if !ctl.user_pending(u, None) || running.is_some_and(|r| *t < r) {
                    continue;
                }
                if *t < now {
                    self.users.insert(u.clone());
                } else {
                    self.users_later = true;
                }
            }
        }
        if ctl.organization_id.is_some() {
            self.tenant_org.clone_from(&ctl.organization_id);
        }
    }

    /// Too much per-object work costs more than one full read: do that instead. With no full
    /// read yet (one is due anyway), a handful of users is enough.
    async fn escalate(&mut self, ctl: &Ctl) -> Result<(), EngineError> {
        // More pending users than a page: a full read, unless a running one is about to reflect
        // those asked before it (the rest show up on the first page once it is applied).
        let reconciling = self.fence.job.as_ref().is_some_and(|j| j.kind == JobKind::Reconcile);
        let users = if ctl.pending_users_more && !reconciling {
            u64::MAX
        } else {
            self.users.len() as u64
        };
        let cost = match ctl.full_cost {
            Some(c) => c.max(1),
            None if self.full.is_some() => self.e.cfg.reconcile_threshold as u64,
            None => u64::MAX,
        };
        if users > self.e.cfg.max_pending_users as u64
            || (users > cost && users >= self.e.cfg.reconcile_threshold as u64)
            || self.pending_groups.len() > self.e.cfg.max_pending_groups
        {
            let after = self.asked.hint.unwrap_or(self.now()).max(self.now());
            self.want_full(after);
            // The full read that begins after now covers every one of them. The users stay
            // pending in the control record (the gate keeps them unknown) until it is applied.
            self.users.clear();
            let groups: Vec<String> = std::mem::take(&mut self.pending_groups).into_iter().collect();
            if groups.len() > self.e.cfg.max_pending_groups {
                // Too many to mark one by one: every group's members are unknown to the gate
                // until the full read is applied (set before the pending ones go: fail closed).
                let since = self.now().saturating_sub(Duration::from_millis(1));
                self.store
                    .change_ctl(&self.dir, &CtlChange::GroupsOverflow { since })
                    .await?;
                self.store.drain(&self.dir, &[], &groups).await?;
            } else if !groups.is_empty() {
                // They stay pending in the control record (their members unknown to the gate);
                // the full read marks them changing when it begins, and drains them then.
                let keep = Absorb {
                    groups,
                    at: self.now(),
                    ..Absorb::default()
                };
                self.store.absorb(&self.dir, &keep).await?;
            }
        }
        Ok(())
    }

    /// Remove every pending user whose request a directory-wide read that began after
    /// `before` reflects (page by page: there may be many).
    async fn drain_reflected(&mut self, before: EpochMillis) -> Result<(), EngineError> {
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self.store.pending_users(&self.dir, after.as_deref(), 1000).await?;
            after = page.last().map(|(u, _)| u.clone());
            let reflected: Vec<(String, EpochMillis)> = page
                .into_iter()
                .filter(|(_, t)| *t <= before)
                .map(|(u, _)| (u, before))
                .collect();
            if !reflected.is_empty() {
                self.store.drain(&self.dir, &reflected, &[]).await?;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Checkpoint, hand back what is left, release the lease, and queue a continuation.
    async fn finish(&mut self, worked: bool) -> Result<(), EngineError> {
        // (Users left unread are still in the control record, with their own times.)
        let mut leftovers: Vec<Request> = self.pending_groups.iter().cloned().map(Request::Group).collect();
        if let Some(f) = self.full {
            leftovers.push(Request::Full { after: f.after });
        }
        if !leftovers.is_empty() {
            self.e.absorb(&self.dir, &leftovers, &Asked::default(), None).await?;
        }
        self.fence.owner = None;
        self.fence.pace_next = self.e.api.pace_next(&self.dir).unwrap_or(self.fence.pace_next);
        let released = self.store.put_fence(&self.dir, &self.fence, Some(self.version)).await?;
        if released.is_none() {
            // Taken over (our lease ran out): the new holder continues.
            return Ok(());
        }
        let more = self.fence.job.is_some()
            || !self.users.is_empty()
            || (!self.pending_groups.is_empty() && self.full.is_none());
        let delay = match (more, self.full) {
            (true, _) => Some(Duration::ZERO),
            (false, _) if self.users_later => Some(Duration::from_millis(1)),
            (false, Some(f)) => {
                let due = f.after.min(f.first.saturating_add(self.e.cfg.debounce_max));
                Some(due.remaining_from(self.now()))
            }
            (false, None) => None,
        };
        if let Some(d) = delay {
            // After a failure (WorkOS down, say), come back later rather than at once.
            let d = if worked {
                d
            } else {
                d.max(self.e.cfg.retry_after_failure)
            };
            self.e
                .queue
                .continue_later(&self.dir, d.min(Duration::from_secs(900)))
                .await?;
        }
        Ok(())
    }

    /// Save the job's progress (compare-and-set on the fence: a lost lease stops here).
    async fn checkpoint(&mut self) -> Result<(), EngineError> {
        match self.store.put_fence(&self.dir, &self.fence, Some(self.version)).await? {
            Some(v) => {
                self.version = v;
                self.steps_since_checkpoint = 0;
                Ok(())
            }
            None => Err(EngineError::Fenced),
        }
    }

    async fn commit(&mut self, writes: Vec<Write>) -> Result<(), EngineError> {
        if writes.is_empty() {
            return Ok(());
        }
        let n = writes.len() as u64;
        self.store.commit(&self.dir, self.version, writes).await?;
        if let Some(j) = self.fence.job.as_mut() {
            j.stats.records_written += n;
        }
        Ok(())
    }

    /// Commit user records with their index and look-up writes. Each user's writes stay together
    /// when they fit one commit; index additions always land no later than the user record, and
    /// index removals no earlier, so the index never lacks a stored membership.
    async fn commit_users(&mut self, units: Vec<Vec<Write>>) -> Result<(), EngineError> {
        let mut batch: Vec<Write> = Vec::new();
        for unit in units {
            if unit.len() > MAX_COMMIT {
                self.commit(std::mem::take(&mut batch)).await?;
                let (first, rest): (Vec<Write>, Vec<Write>) = unit.into_iter().partition(|w| {
                    matches!(
                        w,
                        Write::Member { present: true, .. } | Write::Lookup { present: true, .. }
                    )
                });
                for c in first.chunks(MAX_COMMIT) {
                    self.commit(c.to_vec()).await?;
                }
                for c in rest.chunks(MAX_COMMIT) {
                    self.commit(c.to_vec()).await?;
                }
                continue;
            }
            if batch.len() + unit.len() > MAX_COMMIT {
                self.commit(std::mem::take(&mut batch)).await?;
            }
            batch.extend(unit);
        }
        self.commit(batch).await
    }

    /// Was one of the user's groups renamed or deleted after its entitlements were computed?
    fn behind_groups(&self, rec: &UserRecord) -> bool {
        rec.member_of().any(|g| {
            self.groups
                .get(g)
                .and_then(|g| g.value.changed_at)
                .is_some_and(|c| rec.computed_at.is_none_or(|at| at <= c))
        })
    }

    /// Recompute a user's entitlements from its facts and the cached group names.
    fn recompute(&self, rec: &mut UserRecord) -> bool {
        let org = self.tenant_org.as_deref().unwrap_or("");
        let names = Names(&self.groups);
        let ctx = Derive {
            rules: &self.e.cfg.rules,
            rules_fp: &self.e.rules_fp,
            tenant: Tenant {
                organization_id: org,
                directory_id: &self.dir,
            },
            names: &names,
            now: self.now(),
        };
        rec.recompute(&ctx)
    }

    /// The writes that store a user record (version-checked) and keep the index and look-ups equal
    /// to it. Empty when nothing changed.
    fn user_writes(&self, l: &Loaded) -> Vec<Write> {
        if !l.changed() {
            return Vec::new();
        }
        let mut w = Vec::new();
        let old = l.before.as_ref().map(|b| &b.value);
        let was: BTreeSet<&str> = old.map(|o| o.member_of().collect()).unwrap_or_default();
        let now: BTreeSet<&str> = l.rec.member_of().collect();
        for g in now.difference(&was) {
            w.push(Write::Member {
                group_id: g.to_string(),
                user_id: l.rec.user_id.clone(),
                present: true,
            });
        }
        w.extend(self.lookup_writes(l, true));
        if old.is_none() {
            w.push(Write::Alias {
                user_id: l.rec.user_id.clone(),
            });
        }
        w.push(Write::User {
            record: l.rec.clone(),
            expect: l.before.as_ref().map(|b| b.version),
        });
        for g in was.difference(&now) {
            w.push(Write::Member {
                group_id: g.to_string(),
                user_id: l.rec.user_id.clone(),
                present: false,
            });
        }
        w.extend(self.lookup_writes(l, false));
        w
    }

    /// The look-up items (e-mail and IdP-id hashes) a changed user record needs: the new hashes
    /// (`present`), written before the record, or the old ones it no longer has, removed after.
    fn lookup_writes(&self, l: &Loaded, present: bool) -> Vec<Write> {
        let Some(org) = &self.tenant_org else {
            return Vec::new();
        };
        let old = l.before.as_ref().map(|b| &b.value);
        [
            (
                LookupKind::Email,
                l.rec.email_hash.as_ref(),
                old.and_then(|o| o.email_hash.as_ref()),
            ),
            (
                LookupKind::Idp,
                l.rec.idp_hash.as_ref(),
                old.and_then(|o| o.idp_hash.as_ref()),
            ),
        ]
        .into_iter()
        .filter(|(_, new, was)| new != was)
        .filter_map(|(kind, new, was)| if present { new } else { was }.map(|h| (kind, h)))
        .map(|(kind, h)| Write::Lookup {
            organization_id: org.clone(),
            kind,
            hash: h.clone(),
            user_id: l.rec.user_id.clone(),
            present,
        })
        .collect()
    }

    async fn load_users(&self, ids: &[String]) -> Result<Vec<Loaded>, EngineError> {
        let mut stored: HashMap<String, Versioned<UserRecord>> = self
            .store
            .users(&self.dir, ids)
            .await?
            .into_iter()
            .map(|u| (u.value.user_id.clone(), u))
            .collect();
        Ok(ids.iter().map(|id| Loaded::new(stored.remove(id), id)).collect())
    }

    /// Record a group's name (or its deletion) as read at `at`; marks its members for
    /// recomputation when it changed. Returns whether it changed.
    async fn observe_group(&mut self, gid: &str, name: Option<&str>, at: EpochMillis) -> Result<bool, EngineError> {
        let before = self.groups.get(gid).cloned();
        let mut rec = before
            .as_ref()
            .map_or_else(|| GroupRecord::new(gid), |g| g.value.clone());
        let (applied, changed) = rec.observe(name, at);
        // Seeing the same name again is no change: nothing is written (writes follow change).
        if !applied || (before.is_some() && !changed) {
            return Ok(false);
        }
        if changed {
            self.store
                .change_ctl(
                    &self.dir,
                    &CtlChange::Propagating {
                        group_id: gid.to_string(),
                        since: at,
                    },
                )
                .await?;
            self.mark_known(gid, at);
        }
        let expect = before.as_ref().map(|b| b.version);
        self.commit(vec![Write::Group {
            record: rec.clone(),
            expect,
        }])
        .await?;
        if let Some(j) = self.fence.job.as_mut() {
            if before.is_none() && name.is_some() {
                j.stats.groups_created += 1;
            } else if changed && name.is_none() {
                j.stats.groups_deleted += 1;
            } else if changed {
                j.stats.groups_renamed += 1;
            }
        }
        self.groups.insert(
            gid.to_string(),
            Versioned {
                version: expect.map_or(1, |v| v + 1),
                value: rec,
            },
        );
        Ok(changed)
    }

    /// `GET /directories/{id}`: its organization (the tenant of the rules), or its deletion.
    async fn read_directory(&mut self) -> Result<(), EngineError> {
        match self.e.api.get_directory(&self.dir, &self.budget).await? {
            None => self.tombstone().await,
            Some(info) => {
                let org = info.organization_id.unwrap_or_default();
                self.store
                    .change_ctl(&self.dir, &CtlChange::Organization(org.clone()))
                    .await?;
                self.store
                    .register(&Registered {
                        directory_id: self.dir.clone(),
                        organization_id: Some(org.clone()),
                        deleted: false,
                    })
                    .await?;
                self.tenant_org = Some(org);
                Ok(())
            }
        }
    }

    /// The directory is gone: tombstone it (every later commit fails) and start the purge.
    async fn tombstone(&mut self) -> Result<(), EngineError> {
        let now = self.now();
        let purging = self.fence.job.as_ref().is_some_and(|j| j.kind == JobKind::Purge);
        if self.fence.deleted_at.is_none() {
            self.fence.deleted_at = Some(now);
            self.fence.job = Some(self.new_job(JobKind::Purge, Phase::Purge { after: None }, now));
            self.checkpoint().await?;
            tracing::warn!(directory_id = %self.dir, "directory deleted in WorkOS: tombstoned, purging");
        } else if self.fence.job.is_some() && !purging {
            // A job begun before the deletion was known: the purge replaces it.
            self.fence.job = Some(self.new_job(JobKind::Purge, Phase::Purge { after: None }, now));
            self.checkpoint().await?;
        }
        let at = self.fence.deleted_at.unwrap_or(now);
        self.store.change_ctl(&self.dir, &CtlChange::Deleted(at)).await?;
        self.store
            .register(&Registered {
                directory_id: self.dir.clone(),
                organization_id: self.tenant_org.clone(),
                deleted: true,
            })
            .await?;
        self.users.clear();
        self.pending_groups.clear();
        self.full = None;
        self.deleted_now = true;
        Ok(())
    }

    fn new_job(&self, kind: JobKind, phase: Phase, now: EpochMillis) -> Job {
        Job {
            id: format!("r{:x}{:06x}", now.0, fastrand::u32(..) & 0xff_ffff),
            kind,
            started_at: now.0,
            phase,
            salt: format!("{:016x}", fastrand::u64(..)),
            stats: RunStats::default(),
            chunks: 0,
            initial: false,
        }
    }

    async fn start_job(&mut self, kind: JobKind) -> Result<(), EngineError> {
        if self.fence.deleted_at.is_some() {
            return Ok(());
        }
        let now = self.now();
        let phase = match &kind {
            JobKind::Reconcile => Phase::Directory,
            JobKind::Group { .. } => Phase::GroupRead,
            JobKind::Purge => Phase::Purge { after: None },
        };
        let mut job = self.new_job(kind, phase, now);
        job.initial = self.store.ctl(&self.dir).await?.full_applied_at.is_none() && job.kind == JobKind::Reconcile;
        tracing::info!(directory_id = %self.dir, run = %job.id, kind = ?job.kind, "job started");
        self.fence.job = Some(job);
        self.checkpoint().await
    }

    // ------------------------------------------------------------------------------ user refresh

    /// Re-read one user and its groups; rewrite its record, index and look-ups in one commit.
    async fn refresh_user(&mut self, uid: &str) -> Result<(), EngineError> {
        let read_at = self.now();
        let fetched = self.e.api.get_user(&self.dir, uid, &self.budget).await?;
        let fetched = match fetched {
            Some(u) if u.directory_id != self.dir => {
                tracing::warn!(directory_id = %self.dir, user_id = %uid, "WorkOS places the user in another directory: not stored here");
                None
            }
            other => other,
        };
        let groups = match &fetched {
            None => None,
            Some(_) => self.e.api.user_groups(&self.dir, uid, &self.budget).await?,
        };
        let mut listed: Vec<&DirGroup> = Vec::new();
        if let Some(gs) = &groups {
            for g in gs {
                if g.directory_id == self.dir {
                    listed.push(g);
                } else {
                    tracing::warn!(directory_id = %self.dir, group_id = %g.id, "WorkOS listed a group of another directory: ignored");
                }
            }
        }
        for g in &listed {
            if self.observe_group(&g.id, Some(&g.name), read_at).await? {
                // Its other members follow in a group job.
                self.pending_groups.insert(g.id.clone());
            }
        }
        let mut l = self
            .load_users(&[uid.to_string()])
            .await?
            .pop()
            .unwrap_or_else(|| Loaded::new(None, uid));
        match (&fetched, &groups) {
            (Some(u), Some(_)) => {
                l.rec.observe_state(&u.state, read_at);
                l.rec.observe_all_groups(listed.iter().map(|g| g.id.as_str()), read_at);
                if u.email_hash.is_some() {
                    l.rec.email_hash.clone_from(&u.email_hash);
                }
                if u.idp_hash.is_some() {
                    l.rec.idp_hash.clone_from(&u.idp_hash);
                }
            }
            _ => {
                if l.before.is_none() {
                    // Never stored and gone already: nothing to remember but the fence.
                }
                l.rec.observe_deleted(read_at);
            }
        }
        l.rec.mark_applied(read_at);
        l.rec.prune(self.now());
        self.recompute(&mut l.rec);
        let writes = self.user_writes(&l);
        self.commit_users(vec![writes]).await
    }

    // --------------------------------------------------------------------------------- job steps

    async fn job_step(&mut self) -> Result<(), EngineError> {
        let Some(job) = self.fence.job.clone() else {
            return Ok(());
        };
        let (calls0, throttled0) = (u64::from(self.budget.calls()), u64::from(self.budget.throttled()));
        let (reads0, writes0) = (self.meter.read_units(), self.meter.write_units());
        let next = match (&job.kind, &job.phase) {
            (_, Phase::Purge { after }) => self.purge_step(after.clone()).await?,
            (_, Phase::Directory) => {
                self.read_directory().await?;
                if self.deleted_now {
                    return Ok(());
                }
                Some(Phase::Groups {
                    after: None,
                    page: 0,
                    started: self.now().0,
                })
            }
            (_, Phase::Groups { after, page, started }) => {
                self.groups_step(&job, after.clone(), *page, *started).await?
            }
            (_, Phase::Users { after, page, started }) => self.users_step(&job, after.clone(), *page, *started).await?,
            (
                _,
                Phase::Members {
                    gpage,
                    gidx,
                    after,
                    page,
                    started,
                },
            ) => {
                self.members_step(&job, *gpage, *gidx, after.clone(), *page, *started)
                    .await?
            }
            (_, Phase::SweepGroups) => self.sweep_groups_step(&job).await?,
            (_, Phase::SweepUsers { after }) => self.sweep_users_step(&job, after.clone()).await?,
            (_, Phase::SweepMembers { group_after, after }) => {
                self.sweep_members_step(&job, group_after.clone(), after.clone())
                    .await?
            }
            (JobKind::Group { group_id }, Phase::GroupRead) => self.group_read_step(group_id).await?,
            (JobKind::Group { group_id }, Phase::GroupMembers { after, page, started }) => {
                self.group_members_step(&job, group_id, after.clone(), *page, *started)
                    .await?
            }
            (JobKind::Group { group_id }, Phase::GroupSweep { after, started, gone }) => {
                self.group_sweep_step(&job, group_id, after.clone(), *started, *gone)
                    .await?
            }
            (_, Phase::Finish) => {
                self.finish_job(&job).await?;
                return Ok(());
            }
            (kind, phase) => return Err(EngineError::BadJob(format!("{kind:?} in {phase:?}"))),
        };
        if self.deleted_now && job.kind != JobKind::Purge {
            return Ok(());
        }
        let (calls, throttled) = (
            u64::from(self.budget.calls()) - calls0,
            u64::from(self.budget.throttled()) - throttled0,
        );
        let (reads, writes) = (self.meter.read_units() - reads0, self.meter.write_units() - writes0);
        let count_chunk = !self.job_chunk_counted;
        self.job_chunk_counted = true;
        if let Some(j) = self.fence.job.as_mut() {
            j.stats.workos_calls += calls;
            j.stats.throttled += throttled;
            j.stats.read_units += reads;
            j.stats.write_units += writes;
            if count_chunk {
                j.chunks += 1;
            }
            if let Some(p) = next.clone() {
                if std::mem::discriminant(&p) != std::mem::discriminant(&j.phase) {
                    self.steps_since_checkpoint = self.e.cfg.checkpoint_every;
                }
                j.phase = p;
            }
        }
        self.steps_since_checkpoint += 1;
        if self.steps_since_checkpoint >= self.e.cfg.checkpoint_every || !self.time_left() {
            self.checkpoint().await?;
        }
        Ok(())
    }

    fn count(&mut self, f: impl FnOnce(&mut RunStats)) {
        if let Some(j) = self.fence.job.as_mut() {
            f(&mut j.stats);
        }
    }

    async fn groups_step(
        &mut self,
        job: &Job,
        after: Option<String>,
        page: u32,
        started: u64,
    ) -> Result<Option<Phase>, EngineError> {
        let t = self.now();
        let Some(p) = self
            .e
            .api
            .groups_page(&self.dir, after.as_deref(), &self.budget)
            .await?
        else {
            self.tombstone().await?;
            return Ok(None);
        };
        self.count(|s| s.pages += 1);
        let mut ids = Vec::new();
        for g in &p.items {
            if g.directory_id != self.dir {
                continue;
            }
            ids.push(g.id.clone());
            self.observe_group(&g.id, Some(&g.name), t).await?;
        }
        self.count(|s| s.groups_listed += ids.len() as u64);
        let last = p.after.is_none();
        let seen = SeenPage {
            started: EpochMillis(started),
            hashes: Vec::new(),
            ids,
            last,
        };
        self.store.put_seen(&self.dir, &job.id, "groups", page, &seen).await?;
        Ok(Some(match p.after {
            Some(a) => Phase::Groups {
                after: Some(a),
                page: page + 1,
                started,
            },
            None => Phase::Users {
                after: None,
                page: 0,
                started: self.now().0,
            },
        }))
    }

    /// Apply one listed page of users (a directory's, or a group's members) to stored records.
    async fn apply_users(
        &mut self,
        users: &[DirUser],
        t: EpochMillis,
        member_of: Option<&str>,
    ) -> Result<(), EngineError> {
        let ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
        let mut loaded = self.load_users(&ids).await?;
        let mut units = Vec::new();
        let mut stats = RunStats::default();
        for (l, u) in loaded.iter_mut().zip(users) {
            let created = l.before.is_none();
            let state_changed = l.rec.observe_state(&u.state, t);
            let mut hashes_changed = false;
            if u.email_hash.is_some() && l.rec.email_hash != u.email_hash {
                l.rec.email_hash.clone_from(&u.email_hash);
                hashes_changed = true;
            }
            if u.idp_hash.is_some() && l.rec.idp_hash != u.idp_hash {
                l.rec.idp_hash.clone_from(&u.idp_hash);
                hashes_changed = true;
            }
            let mut member_changed = false;
            if let Some(gid) = member_of {
                member_changed = l.rec.observe_member(gid, true, t);
            }
            let stale = l.rec.rules_fp != self.e.rules_fp || self.behind_groups(&l.rec);
            if !(created || state_changed || member_changed || stale || hashes_changed) {
                // The listing saw what is stored: no write. (The stored observation time stays
                // that of the last change, which is what a later sweep is fenced against.)
                l.rec = l.before.as_ref().map_or_else(|| l.rec.clone(), |b| b.value.clone());
                continue;
            }
            if created || state_changed || member_changed || stale {
                let before = l.rec.entitlements.clone();
                self.recompute(&mut l.rec);
                if l.rec.entitlements != before && !created {
                    stats.entitlements_changed += 1;
                }
            }
            if created {
                stats.users_created += 1;
            } else if state_changed {
                stats.users_changed += 1;
            }
            if member_changed {
                stats.memberships_added += 1;
            }
            units.push(self.user_writes(l));
        }
        self.count(|s| {
            s.users_created += stats.users_created;
            s.users_changed += stats.users_changed;
            s.memberships_added += stats.memberships_added;
            s.entitlements_changed += stats.entitlements_changed;
        });
        self.commit_users(units).await
    }

    async fn users_step(
        &mut self,
        job: &Job,
        after: Option<String>,
        page: u32,
        started: u64,
    ) -> Result<Option<Phase>, EngineError> {
        let t = self.now();
        let Some(p) = self
            .e
            .api
            .users_page(&self.dir, Listing::Directory, after.as_deref(), &self.budget)
            .await?
        else {
            self.tombstone().await?;
            return Ok(None);
        };
        self.count(|s| s.pages += 1);
        let users: Vec<DirUser> = p.items.into_iter().filter(|u| u.directory_id == self.dir).collect();
        self.count(|s| s.users_listed += users.len() as u64);
        self.apply_users(&users, t, None).await?;
        let salt = job.salt.as_bytes();
        let seen = SeenPage {
            started: EpochMillis(started),
            hashes: users.iter().map(|u| fingerprint(salt, &u.id)).collect(),
            ids: Vec::new(),
            last: p.after.is_none(),
        };
        self.store.put_seen(&self.dir, &job.id, "users", page, &seen).await?;
        Ok(Some(match p.after {
            Some(a) => Phase::Users {
                after: Some(a),
                page: page + 1,
                started,
            },
            None => Phase::Members {
                gpage: 0,
                gidx: 0,
                after: None,
                page: 0,
                started: None,
            },
        }))
    }

    async fn members_step(
        &mut self,
        job: &Job,
        gpage: u32,
        gidx: u32,
        after: Option<String>,
        page: u32,
        started: Option<u64>,
    ) -> Result<Option<Phase>, EngineError> {
        let Some(gp) = self.store.seen_page(&self.dir, &job.id, "groups", gpage).await? else {
            return Err(EngineError::BadJob(format!("groups page {gpage} missing")));
        };
        let Some(gid) = gp.ids.get(gidx as usize).cloned() else {
            return Ok(Some(if gp.last {
                Phase::SweepGroups
            } else {
                Phase::Members {
                    gpage: gpage + 1,
                    gidx: 0,
                    after: None,
                    page: 0,
                    started: None,
                }
            }));
        };
        let next_group = Phase::Members {
            gpage,
            gidx: gidx + 1,
            after: None,
            page: 0,
            started: None,
        };
        let started = started.unwrap_or(self.now().0);
        let done = self
            .list_members(&job.id, &format!("m#{gid}"), &gid, after.as_deref(), page, started)
            .await?;
        Ok(Some(match done {
            Some(a) => Phase::Members {
                gpage,
                gidx,
                after: Some(a),
                page: page + 1,
                started: Some(started),
            },
            None => {
                // A group found gone keeps its mark until the sweep has removed its memberships.
                if !self.groups.get(&gid).is_some_and(|g| g.value.is_deleted()) {
                    self.propagated(&gid).await?;
                }
                next_group
            }
        }))
    }

    /// One page of a group's members: add the memberships, remember who was listed. Returns the
    /// cursor of the next page, `None` once the listing ended (or the group is gone).
    #[allow(clippy::too_many_arguments)]
    async fn list_members(
        &mut self,
        run: &str,
        container: &str,
        gid: &str,
        after: Option<&str>,
        page: u32,
        started: u64,
    ) -> Result<Option<String>, EngineError> {
        let t = self.now();
        let listed = self
            .e
            .api
            .users_page(&self.dir, Listing::Group(gid), after, &self.budget)
            .await?;
        let Some(p) = listed else {
            // The group is gone (404 on its member list): its members are removed by the sweep.
            self.observe_group(gid, None, t).await?;
            let seen = SeenPage {
                started: EpochMillis(started),
                last: true,
                ..Default::default()
            };
            self.store.put_seen(&self.dir, run, container, page, &seen).await?;
            return Ok(None);
        };
        self.count(|s| s.pages += 1);
        let users: Vec<DirUser> = p.items.into_iter().filter(|u| u.directory_id == self.dir).collect();
        self.count(|s| s.memberships_listed += users.len() as u64);
        self.apply_users(&users, t, Some(gid)).await?;
        let salt = self.fence.job.as_ref().map(|j| j.salt.clone()).unwrap_or_default();
        let seen = SeenPage {
            started: EpochMillis(started),
            hashes: users.iter().map(|u| fingerprint(salt.as_bytes(), &u.id)).collect(),
            ids: Vec::new(),
            last: p.after.is_none(),
        };
        self.store.put_seen(&self.dir, run, container, page, &seen).await?;
        Ok(p.after)
    }

    /// The group's change has reached every member: clear its mark (if it has one).
    async fn propagated(&mut self, gid: &str) -> Result<(), EngineError> {
        let Some(upto) = self.propagating.remove(gid) else {
            return Ok(());
        };
        self.store
            .change_ctl(
                &self.dir,
                &CtlChange::Propagated {
                    group_id: gid.to_string(),
                    upto,
                },
            )
            .await?;
        Ok(())
    }

    /// Load (and cache for the chunk) the fingerprints of a listed container.
    async fn seen_set(&mut self, run: &str, container: &str) -> Result<&SeenSet, EngineError> {
        let cached = self.seen_cache.as_ref().is_some_and(|s| s.container == container);
        if !cached {
            let pages = self.store.seen(&self.dir, run, container).await?;
            let mut set = SeenSet {
                container: container.to_string(),
                started: EpochMillis(0),
                complete: false,
                hashes: HashSet::new(),
            };
            for p in pages {
                set.started = p.started;
                set.hashes.extend(p.hashes);
                if p.last {
                    set.complete = true;
                    break;
                }
            }
            self.seen_cache = Some(set);
        }
        self.seen_cache
            .as_ref()
            .ok_or_else(|| EngineError::BadJob("seen set".into()))
    }

    async fn sweep_groups_step(&mut self, job: &Job) -> Result<Option<Phase>, EngineError> {
        let pages = self.store.seen(&self.dir, &job.id, "groups").await?;
        let mut listed: HashSet<String> = HashSet::new();
        let mut started = EpochMillis(job.started_at);
        let mut complete = false;
        for p in pages {
            started = p.started;
            listed.extend(p.ids);
            if p.last {
                complete = true;
                break;
            }
        }
        if !complete {
            return Err(EngineError::BadJob("groups listing incomplete at sweep".into()));
        }
        let gone: Vec<String> = self
            .groups
            .values()
            .filter(|g| !g.value.is_deleted() && !listed.contains(&g.value.group_id))
            .filter(|g| g.value.name_at.is_none_or(|t| t <= started))
            .map(|g| g.value.group_id.clone())
            .collect();
        for gid in gone {
            self.observe_group(&gid, None, started).await?;
        }
        Ok(Some(Phase::SweepUsers { after: None }))
    }

    async fn sweep_users_step(&mut self, job: &Job, after: Option<String>) -> Result<Option<Phase>, EngineError> {
        let page = self
            .store
            .users_page(&self.dir, after.as_deref(), self.e.cfg.sweep_page)
            .await?;
        let salt = job.salt.clone();
        let (started, complete, gone): (EpochMillis, bool, Vec<bool>) = {
            let seen = self.seen_set(&job.id, "users").await?;
            (
                seen.started,
                seen.complete,
                page.items
                    .iter()
                    .map(|u| !seen.hashes.contains(&fingerprint(salt.as_bytes(), &u.value.user_id)))
                    .collect(),
            )
        };
        if !complete {
            return Err(EngineError::BadJob("users listing incomplete at sweep".into()));
        }
        let mut units = Vec::new();
        for (u, gone) in page.items.into_iter().zip(gone) {
            let mut l = Loaded::new(Some(u), "");
            let was_deleted = l.rec.state == Some(UserState::Deleted);
            if gone && !was_deleted && l.rec.state_at.is_none_or(|t| t <= started) {
                if let Some(left) = l.rec.observe_deleted(started) {
                    self.count(|s| {
                        s.users_deleted += 1;
                        s.memberships_removed += left.len() as u64;
                    });
                }
            }
            if l.changed() || l.rec.rules_fp != self.e.rules_fp || self.behind_groups(&l.rec) {
                let before = l.rec.entitlements.clone();
                self.recompute(&mut l.rec);
                if l.rec.entitlements != before {
                    self.count(|s| s.entitlements_changed += 1);
                }
            }
            units.push(self.user_writes(&l));
        }
        self.commit_users(units).await?;
        Ok(Some(match page.after {
            Some(a) => Phase::SweepUsers { after: Some(a) },
            None => Phase::SweepMembers {
                group_after: None,
                after: None,
            },
        }))
    }

    async fn sweep_members_step(
        &mut self,
        job: &Job,
        group_after: Option<String>,
        after: Option<String>,
    ) -> Result<Option<Phase>, EngineError> {
        let current = match &group_after {
            None => self.groups.keys().next().cloned(),
            Some(g) => self
                .groups
                .range::<String, _>((std::ops::Bound::Excluded(g.clone()), std::ops::Bound::Unbounded))
                .next()
                .map(|(k, _)| k.clone()),
        };
        let Some(gid) = current else {
            return Ok(Some(Phase::Finish));
        };
        let deleted = self.groups.get(&gid).is_some_and(|g| g.value.is_deleted());
        let deleted_at = self.groups.get(&gid).and_then(|g| g.value.name_at);
        let (fence_at, set): (EpochMillis, Option<HashSet<u64>>) = if deleted {
            (deleted_at.unwrap_or(EpochMillis(job.started_at)), None)
        } else {
            let seen = self.seen_set(&job.id, &format!("m#{gid}")).await?;
            if !seen.complete {
                // Not listed in this run (created meanwhile): nothing to sweep for it.
                return Ok(Some(Phase::SweepMembers {
                    group_after: Some(gid),
                    after: None,
                }));
            }
            (seen.started, Some(seen.hashes.clone()))
        };
        let next = self
            .remove_unlisted(&gid, after.as_deref(), fence_at, set.as_ref(), &job.salt)
            .await?;
        Ok(Some(match next {
            Some(a) => Phase::SweepMembers {
                group_after,
                after: Some(a),
            },
            None => {
                if deleted {
                    self.propagated(&gid).await?;
                }
                Phase::SweepMembers {
                    group_after: Some(gid),
                    after: None,
                }
            }
        }))
    }

    /// One stored page of a group's members: remove those not listed (all of them when `listed`
    /// is `None`: the group is gone), fenced by `at`. Returns the next cursor.
    async fn remove_unlisted(
        &mut self,
        gid: &str,
        after: Option<&str>,
        at: EpochMillis,
        listed: Option<&HashSet<u64>>,
        salt: &str,
    ) -> Result<Option<String>, EngineError> {
        let page = self
            .store
            .members_page(&self.dir, gid, after, self.e.cfg.sweep_page)
            .await?;
        let gone: Vec<String> = page
            .items
            .iter()
            .filter(|u| listed.is_none_or(|l| !l.contains(&fingerprint(salt.as_bytes(), u))))
            .cloned()
            .collect();
        if !gone.is_empty() {
            let mut loaded = self.load_users(&gone).await?;
            let mut units = Vec::new();
            let mut removed = 0u64;
            let mut ents = 0u64;
            for l in loaded.iter_mut() {
                if l.before.is_none() {
                    // An index entry without its user: drop it.
                    units.push(vec![Write::Member {
                        group_id: gid.to_string(),
                        user_id: l.rec.user_id.clone(),
                        present: false,
                    }]);
                    continue;
                }
                if l.rec.observe_member(gid, false, at) {
                    removed += 1;
                    let before = l.rec.entitlements.clone();
                    self.recompute(&mut l.rec);
                    if before != l.rec.entitlements {
                        ents += 1;
                    }
                }
                let mut w = self.user_writes(l);
                if !l.rec.is_member(gid) && w.is_empty() {
                    // Stored as not a member but still indexed: drop the index entry.
                    w.push(Write::Member {
                        group_id: gid.to_string(),
                        user_id: l.rec.user_id.clone(),
                        present: false,
                    });
                }
                units.push(w);
            }
            self.count(|s| {
                s.memberships_removed += removed;
                s.entitlements_changed += ents;
            });
            self.commit_users(units).await?;
        }
        Ok(page.after)
    }

    async fn group_read_step(&mut self, gid: &str) -> Result<Option<Phase>, EngineError> {
        let t = self.now();
        let g = match self.e.api.get_group(&self.dir, gid, &self.budget).await? {
            Some(g) if g.directory_id != self.dir => {
                tracing::warn!(directory_id = %self.dir, group_id = %gid, "WorkOS places the group in another directory: treated as gone here");
                None
            }
            other => other,
        };
        self.count(|s| s.pages += 1);
        match g {
            None => {
                self.observe_group(gid, None, t).await?;
                Ok(Some(Phase::GroupSweep {
                    after: None,
                    started: t.0,
                    gone: true,
                }))
            }
            Some(g) => {
                self.observe_group(gid, Some(&g.name), t).await?;
                Ok(Some(Phase::GroupMembers {
                    after: None,
                    page: 0,
                    started: t.0,
                }))
            }
        }
    }

    async fn group_members_step(
        &mut self,
        job: &Job,
        gid: &str,
        after: Option<String>,
        page: u32,
        started: u64,
    ) -> Result<Option<Phase>, EngineError> {
        let next = self
            .list_members(&job.id, "members", gid, after.as_deref(), page, started)
            .await?;
        let gone = self.groups.get(gid).is_some_and(|g| g.value.is_deleted());
        Ok(Some(match next {
            Some(a) => Phase::GroupMembers {
                after: Some(a),
                page: page + 1,
                started,
            },
            None => Phase::GroupSweep {
                after: None,
                started,
                gone,
            },
        }))
    }

    async fn group_sweep_step(
        &mut self,
        job: &Job,
        gid: &str,
        after: Option<String>,
        started: u64,
        gone: bool,
    ) -> Result<Option<Phase>, EngineError> {
        let (at, set) = if gone {
            (
                self.groups
                    .get(gid)
                    .and_then(|g| g.value.name_at)
                    .unwrap_or(EpochMillis(started)),
                None,
            )
        } else {
            let seen = self.seen_set(&job.id, "members").await?;
            if !seen.complete {
                return Err(EngineError::BadJob("group listing incomplete at sweep".into()));
            }
            (EpochMillis(started), Some(seen.hashes.clone()))
        };
        let next = self
            .remove_unlisted(gid, after.as_deref(), at, set.as_ref(), &job.salt)
            .await?;
        Ok(Some(match next {
            Some(a) => Phase::GroupSweep {
                after: Some(a),
                started,
                gone,
            },
            None => Phase::Finish,
        }))
    }

    async fn purge_step(&mut self, after: Option<String>) -> Result<Option<Phase>, EngineError> {
        let at = self.fence.deleted_at.unwrap_or(self.now());
        self.store.change_ctl(&self.dir, &CtlChange::Deleted(at)).await?;
        let p = self.store.purge_page(&self.dir, after.as_deref(), 100).await?;
        Ok(Some(match p.after {
            Some(a) => Phase::Purge { after: Some(a) },
            None => Phase::Finish,
        }))
    }

    async fn finish_job(&mut self, job: &Job) -> Result<(), EngineError> {
        let now = self.now();
        let started = EpochMillis(job.started_at);
        match &job.kind {
            JobKind::Reconcile => {
                let cost = job.stats.pages;
                self.store
                    .change_ctl(&self.dir, &CtlChange::FullApplied { at: started, cost })
                    .await?;
                // Every user asked for before the run began is reflected now, and every group
                // marked before it (a mark left here is of a group the run did not list: gone).
                let before = started.saturating_sub(Duration::from_millis(1));
                let ctl = self.store.ctl(&self.dir).await?;
                for (g, since) in &ctl.propagating {
                    if *since <= started {
                        self.store
                            .change_ctl(
                                &self.dir,
                                &CtlChange::Propagated {
                                    group_id: g.clone(),
                                    upto: started,
                                },
                            )
                            .await?;
                        self.propagating.remove(g);
                    }
                }
                self.drain_reflected(before).await?;
            }
            JobKind::Group { group_id } => {
                if let Some(g) = self.groups.get(group_id).cloned() {
                    let mut rec = g.value.clone();
                    rec.mark_members_applied(started);
                    if rec != g.value {
                        self.commit(vec![Write::Group {
                            record: rec.clone(),
                            expect: Some(g.version),
                        }])
                        .await?;
                        self.groups.insert(
                            group_id.clone(),
                            Versioned {
                                version: g.version + 1,
                                value: rec,
                            },
                        );
                    }
                }
                self.propagated(group_id).await?;
            }
            JobKind::Purge => {}
        }
        let stats = job.stats;
        let summary = RunSummary {
            id: job.id.clone(),
            kind: match &job.kind {
                JobKind::Reconcile => "reconcile".into(),
                JobKind::Group { .. } => "group".into(),
                JobKind::Purge => "purge".into(),
            },
            started_at: job.started_at,
            finished_at: now.0,
            chunks: job.chunks + 1,
            initial: job.initial,
            stats,
        };
        if job.kind == JobKind::Reconcile {
            self.store
                .change_ctl(&self.dir, &CtlChange::LastRun(summary.clone()))
                .await?;
            self.store.put_run(&self.dir, &summary).await?;
        }
        tracing::info!(
            directory_id = %self.dir,
            run = %summary.id,
            kind = %summary.kind,
            initial = summary.initial,
            differences = summary.stats.differences(),
            pages = summary.stats.pages,
            records_written = summary.stats.records_written,
            "job finished"
        );
        self.report.finished.push(summary);
        self.fence.job = None;
        self.seen_cache = None;
        self.checkpoint().await
    }
}
