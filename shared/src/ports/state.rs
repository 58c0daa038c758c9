//! The state store port: the directory picture, one lease per directory, and the bookkeeping of
//! the work in progress. Two adapters implement it (`adapters::dynamo_state` and
//! `adapters::memory`), and both pass the same conformance suite (`crate::conformance`).
//!
//! What every adapter guarantees:
//! - reads are strongly consistent;
//! - [`StateStore::commit`] is atomic: all of its writes land, or none do; it lands only if the
//!   directory's fence record still has the version the caller holds (so a holder whose lease was
//!   taken over, or whose directory was deleted meanwhile, writes nothing) and every record's
//!   version is what the caller read;
//! - [`StateStore::put_fence`] is a compare-and-set on the fence record's version;
//! - the pending sets of the control record are changed by atomic set additions and removals, so
//!   concurrent absorbers never lose each other's additions.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::EpochMillis;
use crate::model::{GroupRecord, UserRecord};
use crate::ports::StoreError;

/// A record with the version it was read at (incremented by every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

/// One page of a stored listing; `after` resumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<T> {
    pub items: Vec<T>,
    pub after: Option<String>,
}

/// The per-directory lease, tombstone and job checkpoint. Only the lease holder writes it (and
/// the one who deletes the directory), always by compare-and-set on its version, so a holder that
/// lost its lease can neither checkpoint nor commit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fence {
    /// Incremented on every acquisition.
    pub epoch: u64,
    /// Who holds the lease; `None`: free.
    pub owner: Option<String>,
    pub lease_until: EpochMillis,
    /// Set once, forever, when the directory is deleted in WorkOS.
    pub deleted_at: Option<EpochMillis>,
    /// The earliest time the next paced `/directory_users` request for this directory may go.
    pub pace_next: EpochMillis,
    /// The resumable job in progress.
    pub job: Option<Job>,
}

/// A resumable piece of directory-wide work, checkpointed in the fence record after every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    /// When the job's reads began: what it reflects once finished.
    pub started_at: u64,
    pub phase: Phase,
    /// Keys this run's fingerprints (hex).
    pub salt: String,
    #[serde(default)]
    pub stats: RunStats,
    #[serde(default)]
    pub chunks: u32,
    /// The directory's first complete read (its differences are not missed events).
    #[serde(default)]
    pub initial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Re-read the whole directory.
    Reconcile,
    /// Re-read one group and its members.
    Group { group_id: String },
    /// Delete everything stored for a deleted directory.
    Purge,
}

/// Where a job stands. Cursors are WorkOS `after` ids for listings, stored sort keys for sweeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Read the directory itself (organization, existence).
    Directory,
    /// List every group.
    Groups {
        after: Option<String>,
        page: u32,
        started: u64,
    },
    /// List every user.
    Users {
        after: Option<String>,
        page: u32,
        started: u64,
    },
    /// List each listed group's members: group `gidx` of the groups container's page `gpage`.
    Members {
        gpage: u32,
        gidx: u32,
        after: Option<String>,
        page: u32,
        started: Option<u64>,
    },
    /// Only once everything was listed: tombstone groups that were not listed.
    SweepGroups,
    /// Users that were not listed are deleted.
    SweepUsers { after: Option<String> },
    /// Memberships that were not listed are removed, group by group.
    SweepMembers {
        group_after: Option<String>,
        after: Option<String>,
    },
    /// Group job: read the group.
    GroupRead,
    /// Group job: list its members.
    GroupMembers {
        after: Option<String>,
        page: u32,
        started: u64,
    },
    /// Group job: remove stored members that were not listed (or all, if the group is gone).
    GroupSweep {
        after: Option<String>,
        started: u64,
        gone: bool,
    },
    /// Purge job.
    Purge { after: Option<String> },
    /// Everything is written; record the result.
    Finish,
}

/// What a run read, changed and spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunStats {
    pub workos_calls: u64,
    pub throttled: u64,
    pub pages: u64,
    pub users_listed: u64,
    pub groups_listed: u64,
    pub memberships_listed: u64,
    pub users_created: u64,
    pub users_changed: u64,
    pub users_deleted: u64,
    pub groups_created: u64,
    pub groups_renamed: u64,
    pub groups_deleted: u64,
    pub memberships_added: u64,
    pub memberships_removed: u64,
    pub entitlements_changed: u64,
    pub records_written: u64,
    pub read_units: u64,
    pub write_units: u64,
}

impl RunStats {
    /// Differences with the stored picture: each one is a change the event path had not applied.
    pub fn differences(&self) -> u64 {
        self.users_created
            + self.users_changed
            + self.users_deleted
            + self.groups_created
            + self.groups_renamed
            + self.groups_deleted
            + self.memberships_added
            + self.memberships_removed
    }
}

/// A finished run, kept in the control record (the latest) and in a run record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub kind: String,
    pub started_at: u64,
    pub finished_at: u64,
    pub chunks: u32,
    pub initial: bool,
    pub stats: RunStats,
}

/// A full reconcile someone asked for and that has not started yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullRequest {
    /// When the first pending request was made.
    pub first: EpochMillis,
    /// The run should not begin before this (so it covers every event that asked for it by clock).
    pub after: EpochMillis,
}

/// The directory's control record: what is pending, what is applied, and who it belongs to.
/// Written by absorbers (any worker) and by the lease holder; read by the gate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ctl {
    pub organization_id: Option<String>,
    pub deleted_at: Option<EpochMillis>,
    /// Users with an event received and not yet applied → the time after which a read
    /// reflects every request for the user (the latest one wins). A read of the user, or of the
    /// whole directory, that began after that time reflects it. Each pending user is an item of
    /// its own (no cap, no hot item); this holds the first [`PENDING_PAGE`] in id order.
    pub pending_users: BTreeMap<String, EpochMillis>,
    /// More pending users than `pending_users` holds (see [`StateStore::pending_users`]).
    pub pending_users_more: bool,
    /// Groups with an event received and not yet applied.
    pub pending_groups: BTreeSet<String>,
    /// Group events came that are not recorded one by one (more than the record holds at once):
    /// a directory-wide read that began after this time reflects them; until one is applied,
    /// every member of any group is unknown to the gate. Raised, never lowered.
    pub groups_overflow: Option<EpochMillis>,
    pub full: Option<FullRequest>,
    /// Start of the latest directory-wide read that is fully applied.
    pub full_applied_at: Option<EpochMillis>,
    /// Groups whose change is still being carried to their members (group id → since).
    pub propagating: BTreeMap<String, EpochMillis>,
    pub last_run: Option<RunSummary>,
    /// Paced `/directory_users` pages of the last complete run: what a full re-read costs.
    pub full_cost: Option<u64>,
}

/// How many pending users [`StateStore::ctl`] returns with the control record.
pub const PENDING_PAGE: usize = 256;

/// Additions to the control record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Absorb {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub full: Option<FullRequest>,
    /// A read that begins after this reflects the requests: each user's pending time becomes
    /// this, unless it is already later (a redelivered older event never moves it back).
    pub at: EpochMillis,
}

/// Is a request pending since `t` reflected by a read of the user applied from `applied_at`, or
/// by a directory-wide read applied from `full_applied_at`?
pub fn reflected(t: EpochMillis, applied_at: Option<EpochMillis>, full_applied_at: Option<EpochMillis>) -> bool {
    applied_at.is_some_and(|a| a > t) || full_applied_at.is_some_and(|a| a > t)
}

impl Ctl {
    /// Are there group events recorded only as an overflow that no applied read reflects yet?
    pub fn groups_overflowing(&self) -> bool {
        self.groups_overflow
            .is_some_and(|t| !reflected(t, None, self.full_applied_at))
    }

    /// Is a request for this user pending that no applied read reflects yet? A read of the
    /// user (`applied_at`) or of the whole directory that began after the request reflects it.
    pub fn user_pending(&self, user_id: &str, applied_at: Option<EpochMillis>) -> bool {
        self.pending_users
            .get(user_id)
            .is_some_and(|&t| !reflected(t, applied_at, self.full_applied_at))
    }
}

/// Holder-side changes to the control record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlChange {
    Organization(String),
    /// Monotonic: never moves back.
    FullApplied {
        at: EpochMillis,
        cost: u64,
    },
    /// Remove the full request if nobody pushed its `after` past `upto` meanwhile.
    ClearFull {
        upto: EpochMillis,
    },
    Propagating {
        group_id: String,
        since: EpochMillis,
    },
    /// Remove the mark if it is not newer than `upto`.
    Propagated {
        group_id: String,
        upto: EpochMillis,
    },
    Deleted(EpochMillis),
    LastRun(RunSummary),
    /// Group events not recorded one by one, from `since` (see [`Ctl::groups_overflow`]).
    /// Monotonic: never moves back.
    GroupsOverflow {
        since: EpochMillis,
    },
}

/// Which look-up a hash belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LookupKind {
    Email,
    Idp,
}

impl LookupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LookupKind::Email => "email",
            LookupKind::Idp => "idp",
        }
    }
}

/// One write of a [`StateStore::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `expect`: the version read, or `None` if the record must not exist yet.
    User {
        record: UserRecord,
        expect: Option<u64>,
    },
    Group {
        record: GroupRecord,
        expect: Option<u64>,
    },
    /// The group → member index (kept equal to the user records' present memberships).
    Member {
        group_id: String,
        user_id: String,
        present: bool,
    },
    /// `organization + hash → (directory, user)`, for the gate's look-ups.
    Lookup {
        organization_id: String,
        kind: LookupKind,
        hash: String,
        user_id: String,
        present: bool,
    },
    /// `user id → directory`, so a user can be found by id alone with a consistent read.
    Alias {
        user_id: String,
    },
}

/// Why a commit did not land.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The fence changed: the lease was lost or the directory deleted. Stop.
    #[error("the directory's fence changed: lease lost or directory deleted")]
    Fenced,
    /// A record changed since it was read. Re-read and try again.
    #[error("a record changed since it was read")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a reconcile remembers of one page of a listed container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeenPage {
    /// When the container's listing began (the same on every page).
    pub started: EpochMillis,
    /// Fingerprints of the listed ids (users, members).
    pub hashes: Vec<u64>,
    /// Listed ids in clear (groups only: the members phase walks them).
    pub ids: Vec<String>,
    /// The container's last page.
    pub last: bool,
}

/// One page of a purge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Purged {
    pub deleted: usize,
    pub after: Option<String>,
}

/// Read and write capacity as DynamoDB bills it, counted by the adapters.
#[derive(Debug, Default)]
pub struct Meter {
    /// Read request units, in tenths (eventually consistent reads cost half a unit).
    read_tenths: AtomicU64,
    write_units: AtomicU64,
}

impl Meter {
    pub fn new() -> Arc<Meter> {
        Arc::new(Meter::default())
    }
    pub fn add_read_tenths(&self, tenths: u64) {
        self.read_tenths.fetch_add(tenths, Ordering::Relaxed);
    }
    pub fn add_write_units(&self, units: u64) {
        self.write_units.fetch_add(units, Ordering::Relaxed);
    }
    pub fn read_units(&self) -> u64 {
        self.read_tenths.load(Ordering::Relaxed).div_ceil(10)
    }
    pub fn write_units(&self) -> u64 {
        self.write_units.load(Ordering::Relaxed)
    }
}

/// The state store port.
pub trait StateStore: Clone + Send + Sync + 'static {
    /// The same store, counting what it spends into `meter` as well.
    fn metered(&self, meter: Arc<Meter>) -> Self;

    /// Users by id (missing ones are left out).
    fn users(
        &self,
        dir: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Versioned<UserRecord>>, StoreError>> + Send;
    /// Stored users in id order, from after `after`.
    fn users_page(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Stored<Versioned<UserRecord>>, StoreError>> + Send;
    /// Every group of the directory (groups are few; deleted ones included).
    fn groups(&self, dir: &str) -> impl Future<Output = Result<Vec<Versioned<GroupRecord>>, StoreError>> + Send;
    /// Member ids of a group, from the index, in id order.
    fn members_page(
        &self,
        dir: &str,
        group_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Stored<String>, StoreError>> + Send;
    /// Apply `writes` atomically, if the fence still has `fence_version` (see the module doc).
    /// At most [`MAX_COMMIT`] writes.
    fn commit(
        &self,
        dir: &str,
        fence_version: u64,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<(), CommitError>> + Send;

    fn fence(&self, dir: &str) -> impl Future<Output = Result<Option<Versioned<Fence>>, StoreError>> + Send;
    /// Write the fence if its version is still `expect` (`None`: it must not exist).
    /// Returns the new version, or `None` if the condition failed.
    fn put_fence(
        &self,
        dir: &str,
        fence: &Fence,
        expect: Option<u64>,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// The control record (the default if there is none), with the first [`PENDING_PAGE`]
    /// pending users.
    fn ctl(&self, dir: &str) -> impl Future<Output = Result<Ctl, StoreError>> + Send;
    /// Pending users in id order after `after`, at most `limit` (≥ 1), and whether more follow.
    fn pending_users(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<(Vec<(String, EpochMillis)>, bool), StoreError>> + Send;
    /// One user's pending time (strongly consistent), if it is pending.
    fn pending_user(
        &self,
        dir: &str,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<EpochMillis>, StoreError>> + Send;
    /// Add pending users (their time raised to `a.at`, never lowered) and groups, and merge a
    /// full request (earliest `first`, latest `after`).
    fn absorb(&self, dir: &str, a: &Absorb) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Remove each pending user whose time is at most the one given (a later request for it
    /// stays pending), and these pending groups.
    fn drain(
        &self,
        dir: &str,
        users: &[(String, EpochMillis)],
        groups: &[String],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn change_ctl(&self, dir: &str, change: &CtlChange) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn put_seen(
        &self,
        dir: &str,
        run: &str,
        container: &str,
        page: u32,
        seen: &SeenPage,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The pages of a container, in page order.
    fn seen(
        &self,
        dir: &str,
        run: &str,
        container: &str,
    ) -> impl Future<Output = Result<Vec<SeenPage>, StoreError>> + Send;
    /// One page of a container.
    fn seen_page(
        &self,
        dir: &str,
        run: &str,
        container: &str,
        page: u32,
    ) -> impl Future<Output = Result<Option<SeenPage>, StoreError>> + Send;

    /// The directory a user id belongs to.
    fn alias(&self, user_id: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// `(directory, user)` pairs filed under a look-up hash in an organization.
    fn lookups(
        &self,
        organization_id: &str,
        kind: LookupKind,
        hash: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;

    /// Delete one page of what is stored for a directory (records, index, look-ups, aliases), but
    /// never its fence or control record. Not fenced: only the purge of a deleted directory calls it.
    fn purge_page(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Purged, StoreError>> + Send;
    /// Note that we hold data for a directory (or that it is deleted): the scheduler compares
    /// this registry with WorkOS's list of directories.
    fn register(&self, entry: &Registered) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The registry, in directory id order.
    fn registered(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Stored<Registered>, StoreError>> + Send;
    /// Keep a finished run's summary (for operators; expires).
    fn put_run(&self, dir: &str, run: &RunSummary) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A named stream cursor (the events poller's is `events`).
    fn cursor(&self, name: &str) -> impl Future<Output = Result<Option<Versioned<SavedCursor>>, StoreError>> + Send;
    /// Write a cursor if its version is still `expect` (`None`: it must not exist). Returns the
    /// new version, or `None` if the condition failed (another run wrote it first).
    fn put_cursor(
        &self,
        name: &str,
        cursor: &SavedCursor,
        expect: Option<u64>,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}

/// Where a reader of an outside stream (the WorkOS Events API) stands, and who is reading it.
/// Always written by compare-and-set on its version: a run first takes the lease (so two
/// overlapping runs never read and enqueue the same page), then saves each page's last event
/// only after the page is enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SavedCursor {
    /// The last event enqueued; `None`: start from a time instead.
    pub event_id: Option<String>,
    /// When WorkOS created that event.
    pub event_at: Option<EpochMillis>,
    /// When a run last saved the cursor (advanced it, or read the stream to its end).
    pub saved_at: EpochMillis,
    /// That run read the stream to its end: every event after `event_id` was created after
    /// about `saved_at`.
    pub caught_up: bool,
    /// The run holding the lease; `None`: free.
    pub owner: Option<String>,
    pub lease_until: EpochMillis,
}

/// A directory in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registered {
    pub directory_id: String,
    pub organization_id: Option<String>,
    pub deleted: bool,
}

/// Most writes in one commit (DynamoDB: 100 items per transaction, one is the fence check).
pub const MAX_COMMIT: usize = 99;
