//! In-memory adapters: the same semantics as the DynamoDB and SQS ones (the conformance suite in
//! `crate::conformance` runs against both), for fast tests, the convergence property test and the
//! scale benchmark. Each operation is atomic under one mutex; capacity is billed as DynamoDB
//! would bill the same operation (item sizes from the DynamoDB codec).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::adapters::dynamo::{bill, item_size};
use crate::adapters::dynamo_state::codec;
use crate::clock::{Clock, EpochMillis, EpochSeconds};
use crate::model::{GroupRecord, UserRecord};
use crate::ports::budget::RateBudget;
use crate::ports::claims::*;
use crate::ports::queue::{Outbox, Outgoing, WorkQueue, WorkQueueError};
use crate::ports::state::*;
use crate::ports::StoreError;

/// Expiry stamps used only to size items like the DynamoDB adapter writes them (10 digits).
const SEEN_EXPIRES: u64 = 1_800_000_000;
const RUN_EXPIRES: u64 = 1_800_000_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct StateData {
    fences: HashMap<String, Versioned<Fence>>,
    ctls: HashMap<String, Ctl>,
    /// Pending users: (directory, user) → time (items of their own, as in DynamoDB).
    pending: BTreeMap<(String, String), EpochMillis>,
    users: BTreeMap<(String, String), Versioned<UserRecord>>,
    groups: BTreeMap<(String, String), Versioned<GroupRecord>>,
    /// (directory, group, user)
    members: BTreeSet<(String, String, String)>,
    /// (organization, kind, hash, directory, user)
    lookups: BTreeSet<(String, LookupKind, String, String, String)>,
    aliases: HashMap<String, String>,
    /// (directory, run, container, page)
    seen: BTreeMap<(String, String, String, u32), SeenPage>,
    runs: Vec<(String, RunSummary)>,
    registry: BTreeMap<String, Registered>,
    cursors: HashMap<String, Versioned<SavedCursor>>,
}

/// The state store in memory.
#[derive(Debug, Clone, Default)]
pub struct MemState {
    data: Arc<Mutex<StateData>>,
    meters: Vec<Arc<Meter>>,
}

impl MemState {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self, tenths: u64) {
        for m in &self.meters {
            m.add_read_tenths(tenths);
        }
    }

    fn wrote(&self, units: u64) {
        for m in &self.meters {
            m.add_write_units(units);
        }
    }

    /// How many records of each kind are stored (for benchmarks and tests).
    pub fn counts(&self) -> (usize, usize, usize) {
        let d = lock(&self.data);
        (d.users.len(), d.groups.len(), d.members.len())
    }

    /// What the stored items weigh, as DynamoDB counts item sizes (users, groups, index).
    pub fn bytes(&self) -> usize {
        let d = lock(&self.data);
        let users: usize = d
            .users
            .iter()
            .map(|((dir, _), u)| item_size(&codec::user(dir, &u.value, u.version)))
            .sum();
        let groups: usize = d
            .groups
            .iter()
            .map(|((dir, _), g)| item_size(&codec::group(dir, &g.value, g.version)))
            .sum();
        let members: usize = d
            .members
            .iter()
            .map(|(dir, g, u)| item_size(&codec::member(dir, g, u)))
            .sum();
        users + groups + members
    }

    /// The finished runs kept so far.
    pub fn runs(&self) -> Vec<(String, RunSummary)> {
        lock(&self.data).runs.clone()
    }

    fn user_size(dir: &str, u: &Versioned<UserRecord>) -> usize {
        item_size(&codec::user(dir, &u.value, u.version))
    }
}

impl StateStore for MemState {
    fn metered(&self, meter: Arc<Meter>) -> Self {
        let mut c = self.clone();
        c.meters.push(meter);
        c
    }

    async fn users(&self, dir: &str, ids: &[String]) -> Result<Vec<Versioned<UserRecord>>, StoreError> {
        let d = lock(&self.data);
        let mut out = Vec::new();
        let unique: BTreeSet<&String> = ids.iter().collect();
        for id in unique {
            match d.users.get(&(dir.to_string(), id.clone())) {
                Some(u) => {
                    self.read(bill::read_item(Self::user_size(dir, u)));
                    out.push(u.clone());
                }
                None => self.read(bill::read_item(0)),
            }
        }
        Ok(out)
    }

    async fn users_page(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Stored<Versioned<UserRecord>>, StoreError> {
        let d = lock(&self.data);
        let start = match after {
            Some(a) => std::ops::Bound::Excluded((dir.to_string(), a.to_string())),
            None => std::ops::Bound::Included((dir.to_string(), String::new())),
        };
        let items: Vec<Versioned<UserRecord>> = d
            .users
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|((d2, _), _)| d2 == dir)
            .take(limit.max(1))
            .map(|(_, u)| u.clone())
            .collect();
        self.read(bill::query(items.iter().map(|u| Self::user_size(dir, u)).sum()));
        let more = items.last().is_some_and(|last| {
            d.users
                .range((
                    std::ops::Bound::Excluded((dir.to_string(), last.value.user_id.clone())),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .is_some_and(|((d2, _), _)| d2 == dir)
        });
        let after = if more {
            items.last().map(|u| u.value.user_id.clone())
        } else {
            None
        };
        Ok(Stored { items, after })
    }

    async fn groups(&self, dir: &str) -> Result<Vec<Versioned<GroupRecord>>, StoreError> {
        let d = lock(&self.data);
        let items: Vec<Versioned<GroupRecord>> = d
            .groups
            .range((dir.to_string(), String::new())..)
            .take_while(|((d2, _), _)| d2 == dir)
            .map(|(_, g)| g.clone())
            .collect();
        self.read(bill::query(
            items
                .iter()
                .map(|g| item_size(&codec::group(dir, &g.value, g.version)))
                .sum(),
        ));
        Ok(items)
    }

    async fn members_page(
        &self,
        dir: &str,
        group_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Stored<String>, StoreError> {
        let d = lock(&self.data);
        let lo = (dir.to_string(), group_id.to_string(), after.unwrap_or("").to_string());
        let lower = if after.is_some() {
            std::ops::Bound::Excluded(lo)
        } else {
            std::ops::Bound::Included(lo)
        };
        let mut it = d
            .members
            .range((lower, std::ops::Bound::Unbounded))
            .take_while(|(d2, g2, _)| d2 == dir && g2 == group_id)
            .map(|(_, _, u)| u.clone());
        let items: Vec<String> = it.by_ref().take(limit.max(1)).collect();
        let more = it.next().is_some();
        self.read(bill::query(
            items.iter().map(|u| item_size(&codec::member(dir, group_id, u))).sum(),
        ));
        Ok(Stored {
            after: if more { items.last().cloned() } else { None },
            items,
        })
    }

    async fn commit(&self, dir: &str, fence_version: u64, writes: Vec<Write>) -> Result<(), CommitError> {
        if writes.is_empty() {
            return Ok(());
        }
        if writes.len() > MAX_COMMIT {
            return Err(CommitError::Store(StoreError::Dynamo(format!(
                "{} writes in one commit (at most {MAX_COMMIT})",
                writes.len()
            ))));
        }
        let mut d = lock(&self.data);
        let mut units = bill::transact_item(64);
        for w in &writes {
            units += bill::transact_item(match w {
                Write::User { record, expect } => item_size(&codec::user(dir, record, expect.unwrap_or(0) + 1)),
                Write::Group { record, expect } => item_size(&codec::group(dir, record, expect.unwrap_or(0) + 1)),
                Write::Member { group_id, user_id, .. } => item_size(&codec::member(dir, group_id, user_id)),
                Write::Lookup {
                    organization_id,
                    kind,
                    hash,
                    user_id,
                    ..
                } => item_size(&codec::lookup(dir, organization_id, *kind, hash, user_id)),
                Write::Alias { user_id } => item_size(&codec::alias(dir, user_id)),
            });
        }
        self.wrote(units);
        match d.fences.get(dir) {
            Some(f) if f.version == fence_version && f.value.deleted_at.is_none() => {}
            _ => return Err(CommitError::Fenced),
        }
        for w in &writes {
            let ok = match w {
                Write::User { record, expect } => {
                    d.users
                        .get(&(dir.to_string(), record.user_id.clone()))
                        .map(|u| u.version)
                        == *expect
                }
                Write::Group { record, expect } => {
                    d.groups
                        .get(&(dir.to_string(), record.group_id.clone()))
                        .map(|g| g.version)
                        == *expect
                }
                _ => true,
            };
            if !ok {
                return Err(CommitError::Conflict);
            }
        }
        for w in writes {
            match w {
                Write::User { record, expect } => {
                    let k = (dir.to_string(), record.user_id.clone());
                    d.users.insert(
                        k,
                        Versioned {
                            version: expect.unwrap_or(0) + 1,
                            value: record,
                        },
                    );
                }
                Write::Group { record, expect } => {
                    let k = (dir.to_string(), record.group_id.clone());
                    d.groups.insert(
                        k,
                        Versioned {
                            version: expect.unwrap_or(0) + 1,
                            value: record,
                        },
                    );
                }
                Write::Member {
                    group_id,
                    user_id,
                    present,
                } => {
                    let k = (dir.to_string(), group_id, user_id);
                    if present {
                        d.members.insert(k);
                    } else {
                        d.members.remove(&k);
                    }
                }
                Write::Lookup {
                    organization_id,
                    kind,
                    hash,
                    user_id,
                    present,
                } => {
                    let k = (organization_id, kind, hash, dir.to_string(), user_id);
                    if present {
                        d.lookups.insert(k);
                    } else {
                        d.lookups.remove(&k);
                    }
                }
                Write::Alias { user_id } => {
                    d.aliases.insert(user_id, dir.to_string());
                }
            }
        }
        Ok(())
    }

    async fn fence(&self, dir: &str) -> Result<Option<Versioned<Fence>>, StoreError> {
        let d = lock(&self.data);
        let f = d.fences.get(dir).cloned();
        self.read(bill::read_item(
            f.as_ref()
                .and_then(|f| codec::fence(dir, &f.value, f.version).ok())
                .map_or(0, |i| item_size(&i)),
        ));
        Ok(f)
    }

    async fn put_fence(&self, dir: &str, fence: &Fence, expect: Option<u64>) -> Result<Option<u64>, StoreError> {
        let mut d = lock(&self.data);
        let version = expect.map_or(1, |v| v + 1);
        self.wrote(bill::write_item(item_size(&codec::fence(dir, fence, version)?)));
        if d.fences.get(dir).map(|f| f.version) != expect {
            return Ok(None);
        }
        d.fences.insert(
            dir.to_string(),
            Versioned {
                version,
                value: fence.clone(),
            },
        );
        Ok(Some(version))
    }

    async fn ctl(&self, dir: &str) -> Result<Ctl, StoreError> {
        let c = {
            let d = lock(&self.data);
            let c = d.ctls.get(dir).cloned();
            self.read(bill::read_item(
                c.as_ref().map_or(0, |c| item_size(&codec::ctl(dir, c))),
            ));
            c
        };
        let (users, more) = self.pending_users(dir, None, PENDING_PAGE).await?;
        let mut c = c.unwrap_or_default();
        c.pending_users = users.into_iter().collect();
        c.pending_users_more = more;
        Ok(c)
    }

    async fn pending_users(
        &self,
        dir: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, EpochMillis)>, bool), StoreError> {
        let d = lock(&self.data);
        let limit = limit.max(1);
        let from = (dir.to_string(), after.map(|a| format!("{a}\0")).unwrap_or_default());
        // As the DynamoDB adapter: one query page of `limit + 1` items.
        let mut users: Vec<(String, EpochMillis)> = d
            .pending
            .range(from..)
            .take_while(|((d2, _), _)| d2 == dir)
            .take(limit + 1)
            .map(|((_, u), t)| (u.clone(), *t))
            .collect();
        self.read(bill::query(
            users
                .iter()
                .map(|(u, t)| item_size(&codec::pending_user(dir, u, *t)))
                .sum(),
        ));
        let more = users.len() > limit;
        users.truncate(limit);
        Ok((users, more))
    }

    async fn pending_user(&self, dir: &str, user_id: &str) -> Result<Option<EpochMillis>, StoreError> {
        let d = lock(&self.data);
        let t = d.pending.get(&(dir.to_string(), user_id.to_string())).copied();
        self.read(bill::read_item(
            t.map_or(0, |t| item_size(&codec::pending_user(dir, user_id, t))),
        ));
        Ok(t)
    }

    async fn absorb(&self, dir: &str, a: &Absorb) -> Result<(), StoreError> {
        let mut d = lock(&self.data);
        // As the DynamoDB adapter: one conditional update per user (billed whether or not its
        // condition holds), one for the groups and the full request's `first`, one for its `after`.
        let updates =
            a.users.len() + usize::from(a.full.is_some() || !a.groups.is_empty()) + usize::from(a.full.is_some());
        self.wrote(updates as u64);
        for u in &a.users {
            let t = d.pending.entry((dir.to_string(), u.clone())).or_insert(a.at);
            *t = (*t).max(a.at);
        }
        let c = d.ctls.entry(dir.to_string()).or_default();
        c.pending_groups.extend(a.groups.iter().cloned());
        if let Some(f) = a.full {
            c.full = Some(match c.full {
                None => f,
                Some(old) => FullRequest {
                    first: old.first,
                    after: old.after.max(f.after),
                },
            });
        }
        Ok(())
    }

    async fn drain(&self, dir: &str, users: &[(String, EpochMillis)], groups: &[String]) -> Result<(), StoreError> {
        if users.is_empty() && groups.is_empty() {
            return Ok(());
        }
        let mut d = lock(&self.data);
        // As the DynamoDB adapter: one conditional delete per user, one update for the groups.
        self.wrote(users.len() as u64 + u64::from(!groups.is_empty()));
        for (u, upto) in users {
            let k = (dir.to_string(), u.clone());
            if d.pending.get(&k).is_some_and(|t| t <= upto) {
                d.pending.remove(&k);
            }
        }
        if !groups.is_empty() {
            let c = d.ctls.entry(dir.to_string()).or_default();
            for g in groups {
                c.pending_groups.remove(g);
            }
        }
        Ok(())
    }

    async fn change_ctl(&self, dir: &str, change: &CtlChange) -> Result<(), StoreError> {
        let mut d = lock(&self.data);
        self.wrote(1);
        let c = d.ctls.entry(dir.to_string()).or_default();
        match change {
            CtlChange::Organization(o) => c.organization_id = Some(o.clone()),
            CtlChange::FullApplied { at, cost } => {
                if c.full_applied_at.is_none_or(|t| t < *at) {
                    c.full_applied_at = Some(*at);
                    c.full_cost = Some(*cost);
                }
            }
            CtlChange::ClearFull { upto } => {
                if c.full.is_some_and(|f| f.after <= *upto) {
                    c.full = None;
                }
            }
            CtlChange::Propagating { group_id, since } => {
                let e = c.propagating.entry(group_id.clone()).or_insert(*since);
                *e = (*e).max(*since);
            }
            CtlChange::Propagated { group_id, upto } => {
                if c.propagating.get(group_id).is_some_and(|t| t <= upto) {
                    c.propagating.remove(group_id);
                }
            }
            CtlChange::Deleted(t) => {
                c.deleted_at.get_or_insert(*t);
            }
            CtlChange::LastRun(r) => c.last_run = Some(r.clone()),
            CtlChange::GroupsOverflow { since } => {
                if c.groups_overflow.is_none_or(|t| t < *since) {
                    c.groups_overflow = Some(*since);
                }
            }
        }
        Ok(())
    }

    async fn put_seen(
        &self,
        dir: &str,
        run: &str,
        container: &str,
        page: u32,
        seen: &SeenPage,
    ) -> Result<(), StoreError> {
        let mut d = lock(&self.data);
        self.wrote(bill::write_item(item_size(&codec::seen(
            dir,
            run,
            container,
            page,
            seen,
            SEEN_EXPIRES,
        ))));
        d.seen.insert(
            (dir.to_string(), run.to_string(), container.to_string(), page),
            seen.clone(),
        );
        Ok(())
    }

    async fn seen(&self, dir: &str, run: &str, container: &str) -> Result<Vec<SeenPage>, StoreError> {
        let d = lock(&self.data);
        let k = (dir.to_string(), run.to_string(), container.to_string());
        let pages: Vec<SeenPage> = d
            .seen
            .range((k.0.clone(), k.1.clone(), k.2.clone(), 0)..)
            .take_while(|((a, b, c, _), _)| (a, b, c) == (&k.0, &k.1, &k.2))
            .map(|(_, p)| p.clone())
            .collect();
        self.read(bill::query(
            pages
                .iter()
                .map(|p| item_size(&codec::seen(dir, run, container, 0, p, SEEN_EXPIRES)))
                .sum(),
        ));
        Ok(pages)
    }

    async fn seen_page(
        &self,
        dir: &str,
        run: &str,
        container: &str,
        page: u32,
    ) -> Result<Option<SeenPage>, StoreError> {
        let d = lock(&self.data);
        let p = d
            .seen
            .get(&(dir.to_string(), run.to_string(), container.to_string(), page))
            .cloned();
        self.read(bill::read_item(p.as_ref().map_or(0, |p| {
            item_size(&codec::seen(dir, run, container, page, p, SEEN_EXPIRES))
        })));
        Ok(p)
    }

    async fn alias(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        let dir = lock(&self.data).aliases.get(user_id).cloned();
        self.read(bill::read_item(
            dir.as_ref().map_or(0, |d| item_size(&codec::alias(d, user_id))),
        ));
        Ok(dir)
    }

    async fn lookups(
        &self,
        organization_id: &str,
        kind: LookupKind,
        hash: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let d = lock(&self.data);
        let out: Vec<(String, String)> = d
            .lookups
            .iter()
            .filter(|(o, k, h, _, _)| o == organization_id && *k == kind && h == hash)
            .map(|(_, _, _, dir, u)| (dir.clone(), u.clone()))
            .collect();
        self.read(bill::query(
            out.iter()
                .map(|(dir, u)| item_size(&codec::lookup(dir, organization_id, kind, hash, u)))
                .sum(),
        ));
        Ok(out)
    }

    async fn purge_page(&self, dir: &str, after: Option<&str>, limit: usize) -> Result<Purged, StoreError> {
        // The partition in sort-key order, as DynamoDB keeps it: (sort key, size, what it is).
        enum Rec {
            Keep,
            User(String),
            Group(String),
            Member(String, String),
            Pending(String),
        }
        let ctl = self.ctl(dir).await?;
        let org = ctl.organization_id.clone();
        let mut d = lock(&self.data);
        let mut part: Vec<(String, usize, Rec)> = Vec::new();
        if let Some(f) = d.fences.get(dir) {
            part.push((
                "fence".into(),
                codec::fence(dir, &f.value, f.version).map_or(0, |i| item_size(&i)),
                Rec::Keep,
            ));
        }
        if d.ctls.contains_key(dir) {
            part.push(("ctl".into(), item_size(&codec::ctl(dir, &ctl)), Rec::Keep));
        }
        for ((d2, u), v) in d.users.range((dir.to_string(), String::new())..) {
            if d2 != dir {
                break;
            }
            part.push((
                format!("user#{u}"),
                item_size(&codec::user(dir, &v.value, v.version)),
                Rec::User(u.clone()),
            ));
        }
        for ((d2, g), v) in d.groups.range((dir.to_string(), String::new())..) {
            if d2 != dir {
                break;
            }
            part.push((
                format!("group#{g}"),
                item_size(&codec::group(dir, &v.value, v.version)),
                Rec::Group(g.clone()),
            ));
        }
        for (d2, g, u) in d.members.range((dir.to_string(), String::new(), String::new())..) {
            if d2 != dir {
                break;
            }
            part.push((
                format!("gm#{g}#{u}"),
                item_size(&codec::member(dir, g, u)),
                Rec::Member(g.clone(), u.clone()),
            ));
        }
        for ((d2, u), t) in d.pending.range((dir.to_string(), String::new())..) {
            if d2 != dir {
                break;
            }
            part.push((
                format!("pending#{u}"),
                item_size(&codec::pending_user(dir, u, *t)),
                Rec::Pending(u.clone()),
            ));
        }
        part.sort_by(|a, b| a.0.cmp(&b.0));
        let start = after.map_or(0, |a| part.partition_point(|(sk, _, _)| sk.as_str() <= a));
        let page: Vec<&(String, usize, Rec)> = part[start..].iter().take(limit.max(1)).collect();
        self.read(bill::query(page.iter().map(|(_, size, _)| *size).sum()));
        let next = (start + page.len() < part.len())
            .then(|| page.last().map(|(sk, _, _)| sk.clone()))
            .flatten();
        let mut users = Vec::new();
        let mut groups = Vec::new();
        let mut members = Vec::new();
        let mut pending = Vec::new();
        for (_, _, rec) in &page {
            match rec {
                Rec::Keep => {}
                Rec::Pending(u) => pending.push(u.clone()),
                Rec::User(u) => users.push(u.clone()),
                Rec::Group(g) => groups.push(g.clone()),
                Rec::Member(g, u) => members.push((g.clone(), u.clone())),
            }
        }
        let mut deleted = 0usize;
        for u in users {
            if let Some(v) = d.users.remove(&(dir.to_string(), u.clone())) {
                // The user record and its alias.
                d.aliases.remove(&u);
                deleted += 2;
                if let Some(org) = &org {
                    for (kind, h) in [
                        (LookupKind::Email, &v.value.email_hash),
                        (LookupKind::Idp, &v.value.idp_hash),
                    ] {
                        if let Some(h) = h {
                            d.lookups
                                .remove(&(org.clone(), kind, h.clone(), dir.to_string(), u.clone()));
                            deleted += 1;
                        }
                    }
                }
            }
        }
        for g in groups {
            d.groups.remove(&(dir.to_string(), g));
            deleted += 1;
        }
        for (g, u) in members {
            d.members.remove(&(dir.to_string(), g, u));
            deleted += 1;
        }
        for u in pending {
            d.pending.remove(&(dir.to_string(), u));
            deleted += 1;
        }
        self.wrote(deleted as u64);
        Ok(Purged { deleted, after: next })
    }

    async fn register(&self, entry: &Registered) -> Result<(), StoreError> {
        let mut d = lock(&self.data);
        self.wrote(bill::write_item(item_size(&codec::registered(entry))));
        d.registry.insert(entry.directory_id.clone(), entry.clone());
        Ok(())
    }

    async fn registered(&self, after: Option<&str>, limit: usize) -> Result<Stored<Registered>, StoreError> {
        let d = lock(&self.data);
        let lower = match after {
            Some(a) => std::ops::Bound::Excluded(a.to_string()),
            None => std::ops::Bound::Unbounded,
        };
        let mut it = d
            .registry
            .range((lower, std::ops::Bound::Unbounded))
            .map(|(_, r)| r.clone());
        let items: Vec<Registered> = it.by_ref().take(limit.max(1)).collect();
        let more = it.next().is_some();
        self.read(bill::query(
            items.iter().map(|r| item_size(&codec::registered(r))).sum(),
        ));
        Ok(Stored {
            after: if more {
                items.last().map(|r| r.directory_id.clone())
            } else {
                None
            },
            items,
        })
    }

    async fn put_run(&self, dir: &str, run: &RunSummary) -> Result<(), StoreError> {
        let mut d = lock(&self.data);
        self.wrote(bill::write_item(item_size(&codec::run(dir, run, RUN_EXPIRES)?)));
        d.runs.push((dir.to_string(), run.clone()));
        Ok(())
    }

    async fn cursor(&self, name: &str) -> Result<Option<Versioned<SavedCursor>>, StoreError> {
        let d = lock(&self.data);
        let c = d.cursors.get(name).cloned();
        self.read(bill::read_item(
            c.as_ref()
                .map_or(0, |c| item_size(&codec::cursor(name, &c.value, c.version))),
        ));
        Ok(c)
    }

    async fn put_cursor(
        &self,
        name: &str,
        cursor: &SavedCursor,
        expect: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let mut d = lock(&self.data);
        let version = expect.map_or(1, |v| v + 1);
        self.wrote(bill::write_item(item_size(&codec::cursor(name, cursor, version))));
        if d.cursors.get(name).map(|c| c.version) != expect {
            return Ok(None);
        }
        d.cursors.insert(
            name.to_string(),
            Versioned {
                version,
                value: cursor.clone(),
            },
        );
        Ok(Some(version))
    }
}

// ---------------------------------------------------------------------------------------- claims

#[derive(Debug, Clone)]
struct ClaimItem {
    status: String,
    token: Option<String>,
    lease_until: Option<EpochMillis>,
    expires_at: EpochSeconds,
    outcome: Option<String>,
    applied_by: Option<String>,
    workos_calls: u32,
    source: Option<String>,
}

/// The claim store in memory.
#[derive(Debug, Clone, Default)]
pub struct MemClaims {
    items: Arc<Mutex<HashMap<String, ClaimItem>>>,
}

/// A claim as stored, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimView {
    pub status: String,
    pub outcome: Option<String>,
    pub applied_by: Option<String>,
    pub workos_calls: u32,
    pub source: Option<String>,
}

impl MemClaims {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, event_id: &str) -> Option<ClaimView> {
        lock(&self.items).get(event_id).map(|c| ClaimView {
            status: c.status.clone(),
            outcome: c.outcome.clone(),
            applied_by: c.applied_by.clone(),
            workos_calls: c.workos_calls,
            source: c.source.clone(),
        })
    }

    /// Every stored claim, by event id.
    pub fn all(&self) -> BTreeMap<String, ClaimView> {
        lock(&self.items)
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    ClaimView {
                        status: c.status.clone(),
                        outcome: c.outcome.clone(),
                        applied_by: c.applied_by.clone(),
                        workos_calls: c.workos_calls,
                        source: c.source.clone(),
                    },
                )
            })
            .collect()
    }
}

impl ClaimStore for MemClaims {
    async fn claim(&self, r: &ClaimRequest<'_>) -> Result<ClaimResult, StoreError> {
        let mut items = lock(&self.items);
        if let Some(old) = items.get(r.event_id) {
            let expired = old.expires_at < r.now.to_seconds();
            let lapsed = old.status == IN_PROGRESS && old.lease_until.is_some_and(|l| l < r.now);
            if !expired && !lapsed {
                return Ok(if old.status == IN_PROGRESS {
                    ClaimResult::HeldElsewhere {
                        lease_until: old.lease_until.unwrap_or_default(),
                    }
                } else {
                    ClaimResult::AlreadyDone {
                        status: old.status.clone(),
                    }
                });
            }
        }
        items.insert(
            r.event_id.to_string(),
            ClaimItem {
                status: IN_PROGRESS.into(),
                token: Some(r.token.to_string()),
                lease_until: Some(r.lease_until),
                expires_at: r.expires_at,
                outcome: None,
                applied_by: None,
                workos_calls: 0,
                source: Some(r.source.to_string()),
            },
        );
        Ok(ClaimResult::Acquired)
    }

    async fn complete(&self, c: &Completion<'_>) -> Result<bool, StoreError> {
        let mut items = lock(&self.items);
        match items.get_mut(c.event_id) {
            Some(it) if it.status == IN_PROGRESS && it.token.as_deref() == Some(c.token) => {
                it.status = COMPLETED.into();
                it.lease_until = None;
                it.outcome = Some(c.outcome.to_string());
                it.applied_by = c.applied_by.map(str::to_string);
                it.workos_calls = c.workos_calls;
                it.expires_at = c.expires_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, event_id: &str, token: &str) -> Result<(), StoreError> {
        let mut items = lock(&self.items);
        if items
            .get(event_id)
            .is_some_and(|it| it.status == IN_PROGRESS && it.token.as_deref() == Some(token))
        {
            items.remove(event_id);
        }
        Ok(())
    }

    async fn record_invalid(
        &self,
        key: &str,
        reason: &str,
        _now: EpochMillis,
        expires_at: EpochSeconds,
    ) -> Result<(), StoreError> {
        let mut items = lock(&self.items);
        items.entry(key.to_string()).or_insert(ClaimItem {
            status: INVALID.into(),
            token: None,
            lease_until: None,
            expires_at,
            outcome: Some(reason.to_string()),
            applied_by: None,
            workos_calls: 0,
            source: None,
        });
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------- queue

/// A message of the in-memory queue, as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemMessage {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    pub group: Option<String>,
    pub source: String,
    /// String message attributes (what [`Outbox::send_all`] set; `source` is also above).
    pub attributes: BTreeMap<String, String>,
    pub sent_at: EpochMillis,
    pub receive_count: u32,
}

#[derive(Debug, Clone)]
struct Held {
    msg: MemMessage,
    visible_at: EpochMillis,
}

impl MemMessage {
    /// The record the Lambda handler gets for this message (as the SQS event source builds it).
    pub fn record(&self) -> crate::processor::Record {
        crate::processor::Record {
            message_id: self.message_id.clone(),
            body: Some(self.body.clone()),
            source: self.source.clone(),
            received_at: Some(self.sent_at),
            receive_count: self.receive_count,
            receipt: Some(self.receipt.clone()),
        }
    }
}

#[derive(Debug, Default)]
struct QueueData {
    seq: u64,
    /// By send order.
    messages: BTreeMap<u64, Held>,
    /// The latest receipt of each received message → its key in `messages`.
    receipts: HashMap<String, u64>,
    /// Per group, its messages by (visible at, send order): what is visible is a prefix.
    lanes: BTreeMap<Option<String>, BTreeSet<(EpochMillis, u64)>>,
    dead: Vec<MemMessage>,
    /// Round-robin position over message groups (fair-queue delivery).
    turn: u64,
}

impl QueueData {
    /// Take a message off the queue (and its indexes).
    fn remove(&mut self, k: u64) -> Option<Held> {
        let h = self.messages.remove(&k)?;
        self.receipts.remove(&h.msg.receipt);
        if let Some(lane) = self.lanes.get_mut(&h.msg.group) {
            lane.remove(&(h.visible_at, k));
            if lane.is_empty() {
                self.lanes.remove(&h.msg.group);
            }
        }
        Some(h)
    }

    /// Make a message visible at `visible_at`; with a receipt, count it as received. Returns the
    /// message as delivered.
    fn update(&mut self, k: u64, visible_at: EpochMillis, receipt: Option<String>) -> Option<MemMessage> {
        let h = self.messages.get_mut(&k)?;
        if let Some(lane) = self.lanes.get_mut(&h.msg.group) {
            lane.remove(&(h.visible_at, k));
            lane.insert((visible_at, k));
        }
        h.visible_at = visible_at;
        if let Some(r) = receipt {
            self.receipts.remove(&h.msg.receipt);
            self.receipts.insert(r.clone(), k);
            h.msg.receipt = r;
            h.msg.receive_count += 1;
        }
        Some(h.msg.clone())
    }
}

/// An SQS-like queue on a given clock: visibility timeouts, delays, receive counts, a dead-letter
/// list after `max_receives`, and fair delivery across message groups (like SQS fair queues: a
/// group with a backlog does not hold back the others).
#[derive(Clone)]
pub struct MemQueue {
    data: Arc<Mutex<QueueData>>,
    clock: Arc<dyn Clock>,
    pub visibility: Duration,
    pub max_receives: u32,
}

impl std::fmt::Debug for MemQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemQueue").finish_non_exhaustive()
    }
}

impl MemQueue {
    pub fn new(clock: impl Clock, visibility: Duration, max_receives: u32) -> Self {
        MemQueue {
            data: Arc::new(Mutex::new(QueueData::default())),
            clock: Arc::new(clock),
            visibility,
            max_receives,
        }
    }

    /// Send a message (visible after `delay`).
    pub fn send(&self, body: impl Into<String>, group: Option<&str>, source: &str, delay: Duration) -> String {
        let attributes = BTreeMap::from([("source".to_string(), source.to_string())]);
        self.send_with(body.into(), group, attributes, delay)
    }

    fn send_with(
        &self,
        body: String,
        group: Option<&str>,
        attributes: BTreeMap<String, String>,
        delay: Duration,
    ) -> String {
        let source = attributes.get("source").cloned().unwrap_or_default();
        let now = self.clock.now();
        let mut d = lock(&self.data);
        d.seq += 1;
        let key = d.seq;
        let id = format!("m{key}");
        let visible_at = now.saturating_add(delay);
        d.lanes
            .entry(group.map(str::to_string))
            .or_default()
            .insert((visible_at, key));
        d.messages.insert(
            key,
            Held {
                msg: MemMessage {
                    message_id: id.clone(),
                    receipt: String::new(),
                    body,
                    group: group.map(str::to_string),
                    source,
                    attributes,
                    sent_at: now,
                    receive_count: 0,
                },
                visible_at,
            },
        );
        id
    }

    /// Receive up to `max` visible messages, round-robin across groups; each becomes invisible for
    /// the visibility timeout. Messages received `max_receives` times move to the dead letters.
    pub fn receive(&self, max: usize) -> Vec<MemMessage> {
        let now = self.clock.now();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        // Per group with visible messages, the first `max` of them (earliest visible first); what
        // was received too often goes to the dead letters instead.
        let mut picks: Vec<Vec<u64>> = Vec::new();
        let mut dead = Vec::new();
        for lane in d.lanes.values() {
            let mut pick = Vec::new();
            for &(at, k) in lane.iter() {
                if at > now || pick.len() >= max {
                    break;
                }
                match d.messages.get(&k) {
                    Some(h) if h.msg.receive_count >= self.max_receives => dead.push(k),
                    Some(_) => pick.push(k),
                    None => {}
                }
            }
            if !pick.is_empty() {
                picks.push(pick);
            }
        }
        for k in dead {
            if let Some(h) = d.remove(k) {
                d.dead.push(h.msg);
            }
        }
        let mut out = Vec::new();
        if picks.is_empty() {
            return out;
        }
        let start = (d.turn as usize) % picks.len();
        d.turn = d.turn.wrapping_add(1);
        'rounds: for round in 0..max {
            let mut took = false;
            for j in 0..picks.len() {
                if out.len() >= max {
                    break 'rounds;
                }
                let Some(&k) = picks.get((start + j) % picks.len()).and_then(|l| l.get(round)) else {
                    continue;
                };
                d.seq += 1;
                let receipt = format!("r{}", d.seq);
                let visible_at = now.saturating_add(self.visibility);
                if let Some(msg) = d.update(k, visible_at, Some(receipt)) {
                    out.push(msg);
                    took = true;
                }
            }
            if !took {
                break;
            }
        }
        out
    }

    /// Delete a received message (by its latest receipt).
    pub fn delete(&self, receipt: &str) -> bool {
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        match d.receipts.get(receipt).copied() {
            Some(k) => d.remove(k).is_some(),
            None => false,
        }
    }

    /// Change a received message's visibility.
    pub fn set_visibility(&self, receipt: &str, delay: Duration) -> bool {
        let now = self.clock.now();
        let mut guard = lock(&self.data);
        let d = &mut *guard;
        match d.receipts.get(receipt).copied() {
            Some(k) => d.update(k, now.saturating_add(delay), None).is_some(),
            None => false,
        }
    }

    /// Messages on the queue (visible or not).
    pub fn len(&self) -> usize {
        lock(&self.data).messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the next invisible message becomes visible, if any.
    pub fn next_visible(&self) -> Option<EpochMillis> {
        lock(&self.data)
            .lanes
            .values()
            .filter_map(|l| l.first().map(|&(at, _)| at))
            .min()
    }

    pub fn dead_letters(&self) -> Vec<MemMessage> {
        lock(&self.data).dead.clone()
    }
}

impl WorkQueue for MemQueue {
    async fn continue_later(&self, directory_id: &str, delay: Duration) -> Result<(), WorkQueueError> {
        let body = serde_json::json!({ "object": crate::ports::queue::CONTINUATION, "directory_id": directory_id });
        self.send(body.to_string(), Some(directory_id), "continuation", delay);
        Ok(())
    }

    async fn defer(&self, receipt_handle: &str, delay: Duration) -> Result<(), WorkQueueError> {
        self.set_visibility(receipt_handle, delay);
        Ok(())
    }
}

impl Outbox for MemQueue {
    async fn send_all(&self, messages: &[Outgoing]) -> Result<(), WorkQueueError> {
        for m in messages {
            let attributes = m.attributes.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            self.send_with(m.body.clone(), Some(&m.group), attributes, Duration::ZERO);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------- budget

/// A shared per-key budget in memory: `limit` requests per fixed window.
#[derive(Debug, Clone)]
pub struct MemBudget {
    limit: u32,
    window: Duration,
    state: Arc<Mutex<(u64, u32)>>,
}

impl MemBudget {
    pub fn new(limit: u32, window: Duration) -> Self {
        MemBudget {
            limit,
            window,
            state: Arc::new(Mutex::new((0, 0))),
        }
    }
}

impl RateBudget for MemBudget {
    async fn take(&self, now: EpochMillis) -> Result<Option<EpochMillis>, StoreError> {
        let w = u64::try_from(self.window.as_millis()).unwrap_or(1000).max(1);
        let window = now.0 / w;
        let mut s = lock(&self.state);
        if s.0 != window {
            *s = (window, 0);
        }
        if s.1 < self.limit {
            s.1 += 1;
            Ok(None)
        } else {
            Ok(Some(EpochMillis((window + 1) * w)))
        }
    }
}
