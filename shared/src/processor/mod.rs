//! The event processor: claim each event once, re-read what it names from WorkOS, rewrite the
//! directory picture and the entitlements derived from it.
//!
//! The payload is an invalidation, never the state. Correctness does not depend on order: every
//! fact is fenced by the time its read began, and entitlements are recomputed from stored facts
//! under an optimistic version check (see `state`).

pub mod config;
pub mod lambda;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use futures::TryFutureExt;

use crate::claims::{ClaimRequest, ClaimResult, ClaimStore, Completion};
use crate::clock::{Clock, EpochMillis, EpochSeconds};
use crate::directory::{ApiError, CallBudget, DirectoryApi, UserState};
use crate::dynamo::StoreError;
use crate::plan::{parse_event, Action, Event};
use crate::rules::GroupRef;
use crate::state::StateStore;

pub use config::ProcessorConfig;

/// One queued message, as the SQS event source delivers it.
#[derive(Debug, Clone)]
pub struct Record {
    pub message_id: String,
    pub body: Option<String>,
    /// `webhook` or `events-api`.
    pub source: String,
    pub received_at: Option<EpochMillis>,
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Processed now; the label says how (`refetched`, `skipped`, `reconciled`, `purged`, `ignored`).
    Done { event_id: String, how: &'static str },
    /// Already processed (a duplicate delivery): acknowledged.
    Duplicate { event_id: String },
    /// Can never be processed: recorded and acknowledged.
    Invalid { reason: String },
    /// Failed for a passing reason: reported, so the queue delivers it again.
    Retry { reason: String },
}

impl RecordOutcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, RecordOutcome::Retry { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The processor, generic over its ports.
#[derive(Debug)]
pub struct Processor<A, C, S, K> {
    api: A,
    claims: C,
    state: S,
    clock: K,
    config: ProcessorConfig,
}

/// A claimed event waiting to be executed.
#[derive(Debug, Clone)]
struct Claimed {
    index: usize,
    event: Event,
    token: String,
}

impl<A: DirectoryApi, C: ClaimStore, S: StateStore, K: Clock> Processor<A, C, S, K> {
    pub fn new(api: A, claims: C, state: S, clock: K, config: ProcessorConfig) -> Self {
        Processor {
            api,
            claims,
            state,
            clock,
            config,
        }
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    /// Process a batch. Returns one outcome per record, in order.
    pub async fn process_batch(&self, records: &[Record], deadline: EpochMillis) -> Vec<RecordOutcome> {
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        let expires_at = self.expires_at();

        // 1. Parse; record what can never succeed. A second copy of an event id in the same
        //    batch shares the first copy's fate.
        let mut parsed = Vec::new();
        let mut first_of: HashMap<String, usize> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match r.body.as_deref().map(parse_event) {
                Some(Ok(ev)) => match first_of.get(&ev.id) {
                    Some(&first) => copies.push((i, first)),
                    None => {
                        first_of.insert(ev.id.clone(), i);
                        parsed.push((i, ev));
                    }
                },
                Some(Err(e)) => outcomes[i] = Some(self.invalid(r, &e.to_string(), expires_at).await),
                None => outcomes[i] = Some(self.invalid(r, "empty body", expires_at).await),
            }
        }

        // 2. Claim each event id (concurrently).
        let claims = stream::iter(parsed.into_iter().map(|(i, ev)| async move {
            let token = claim_token(&records[i].message_id, self.clock.now());
            let req = ClaimRequest {
                event_id: &ev.id,
                event_type: &ev.event,
                source: &records[i].source,
                token: &token,
                now: self.clock.now(),
                lease_until: deadline,
                expires_at,
                received_at: records[i].received_at,
            };
            let result = self.claims.claim(&req).await;
            (i, ev, token, result)
        }))
        .buffer_unordered(self.config.concurrency)
        .collect::<Vec<_>>()
        .await;

        let mut claimed = Vec::new();
        for (i, ev, token, result) in claims {
            match result {
                Ok(ClaimResult::Acquired) => claimed.push(Claimed {
                    index: i,
                    event: ev,
                    token,
                }),
                Ok(ClaimResult::AlreadyDone { .. }) => {
                    tracing::info!(event_id = %ev.id, event_type = %ev.event, outcome = "duplicate", "already processed");
                    outcomes[i] = Some(RecordOutcome::Duplicate { event_id: ev.id });
                }
                Ok(ClaimResult::HeldElsewhere { lease_until }) => {
                    tracing::info!(event_id = %ev.id, lease_until_ms = lease_until.0, outcome = "held", "claimed by another run");
                    outcomes[i] = Some(RecordOutcome::Retry {
                        reason: "claimed by another run".into(),
                    });
                }
                Err(e) => {
                    tracing::error!(event_id = %ev.id, error = %e, "claim failed");
                    outcomes[i] = Some(RecordOutcome::Retry {
                        reason: "claim failed".into(),
                    });
                }
            }
        }

        // 3. Coalesce: one execution per distinct action; a directory with many pending
        //    per-object events gets one directory-wide reconcile instead.
        let groups = coalesce(claimed, self.config.reconcile_threshold);
        let (purges, others): (Vec<_>, Vec<_>) = groups
            .into_iter()
            .partition(|(action, _)| matches!(action, Action::Purge { .. }));
        let budget_deadline = deadline.saturating_sub(self.config.reserve);
        for phase in [others, purges] {
            // Each action's events are completed (or released) as soon as it ends, so a crash
            // later in the batch does not make finished work run again.
            let results = stream::iter(phase.into_iter().map(|(action, events)| async move {
                let budget = CallBudget::until(budget_deadline);
                let latest = events.iter().filter_map(|c| c.event.created_at).max();
                let all_dated = events.iter().all(|c| c.event.created_at.is_some());
                let result = self
                    .execute(&action, if all_dated { latest } else { None }, &budget)
                    .await;
                let mut finished = Vec::with_capacity(events.len());
                for c in &events {
                    finished.push((
                        c.index,
                        self.finish(c, &action, &result, budget.calls(), expires_at).await,
                    ));
                }
                finished
            }))
            .buffer_unordered(self.config.concurrency)
            .collect::<Vec<_>>()
            .await;
            for (i, outcome) in results.into_iter().flatten() {
                outcomes[i] = Some(outcome);
            }
        }

        for (i, first) in copies {
            outcomes[i] = match &outcomes[first] {
                Some(RecordOutcome::Done { event_id, .. }) | Some(RecordOutcome::Duplicate { event_id }) => {
                    Some(RecordOutcome::Duplicate {
                        event_id: event_id.clone(),
                    })
                }
                other => other.clone(),
            };
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or(RecordOutcome::Retry {
                    reason: "not processed".into(),
                })
            })
            .collect()
    }

    fn expires_at(&self) -> EpochSeconds {
        self.clock.now().to_seconds().saturating_add(self.config.claim_ttl)
    }

    async fn invalid(&self, r: &Record, reason: &str, expires_at: EpochSeconds) -> RecordOutcome {
        tracing::warn!(message_id = %r.message_id, reason, outcome = "invalid", "message can never be processed");
        let key = format!("invalid#sqs#{}", r.message_id);
        match self
            .claims
            .record_invalid(&key, reason, self.clock.now(), expires_at)
            .await
        {
            Ok(()) => RecordOutcome::Invalid {
                reason: reason.to_string(),
            },
            Err(e) => {
                tracing::error!(message_id = %r.message_id, error = %e, "could not record an invalid message");
                RecordOutcome::Retry {
                    reason: "could not record invalid message".into(),
                }
            }
        }
    }

    async fn finish(
        &self,
        c: &Claimed,
        action: &Action,
        result: &Result<&'static str, ProcessError>,
        calls: u32,
        expires_at: EpochSeconds,
    ) -> RecordOutcome {
        let ev = &c.event;
        match result {
            Ok(how) => {
                let done = Completion {
                    event_id: &ev.id,
                    token: &c.token,
                    outcome: how,
                    workos_calls: calls,
                    done_at: self.clock.now(),
                    expires_at,
                };
                match self.claims.complete(&done).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(event_id = %ev.id, "claim was taken over before completion"),
                    // The work is done and convergent; a redelivery would redo it harmlessly.
                    Err(e) => tracing::error!(event_id = %ev.id, error = %e, "could not mark the claim completed"),
                }
                tracing::info!(
                    event_id = %ev.id, event_type = %ev.event, outcome = *how, workos_calls = calls,
                    directory_id = action.directory_id().unwrap_or(""), "event processed"
                );
                RecordOutcome::Done {
                    event_id: ev.id.clone(),
                    how,
                }
            }
            Err(e) => {
                tracing::warn!(event_id = %ev.id, event_type = %ev.event, error = %e, workos_calls = calls, outcome = "failed", "event failed; releasing the claim");
                if let Err(re) = self.claims.release(&ev.id, &c.token).await {
                    tracing::error!(event_id = %ev.id, error = %re, "could not release the claim; its lease will expire");
                }
                RecordOutcome::Retry { reason: e.to_string() }
            }
        }
    }

    /// Is an event created at `created` already reflected by a read that began at `read`?
    fn reflected(&self, read: Option<EpochMillis>, created: Option<EpochMillis>) -> bool {
        match (read, created) {
            (Some(r), Some(c)) => r >= c.saturating_add(self.config.skip_margin),
            _ => false,
        }
    }

    /// Run one action. `created` is the latest creation time of the events asking for it.
    pub async fn execute(
        &self,
        action: &Action,
        created: Option<EpochMillis>,
        budget: &CallBudget,
    ) -> Result<&'static str, ProcessError> {
        match action {
            Action::Ignore => Ok("ignored"),
            Action::Purge { directory_id } => {
                let n = self.state.purge(directory_id).await?;
                tracing::info!(directory_id = %directory_id, items = n, "directory purged");
                Ok("purged")
            }
            Action::Reconcile { directory_id } => {
                if self.reflected(self.state.full_read_at(directory_id).await?, created) {
                    return Ok("skipped");
                }
                self.reconcile(directory_id, budget).await?;
                Ok("reconciled")
            }
            Action::RefreshUser { directory_id, user_id } => {
                let full = self.state.full_read_at(directory_id).await?;
                let user = self.state.user(directory_id, user_id).await?;
                if self.reflected(full, created) || self.reflected(user.and_then(|u| u.groups_read_at), created) {
                    return Ok("skipped");
                }
                self.refresh_user(directory_id, user_id, budget).await?;
                Ok("refetched")
            }
            Action::RefreshGroup { directory_id, group_id } => {
                let full = self.state.full_read_at(directory_id).await?;
                let group = self.state.group(directory_id, group_id).await?;
                if self.reflected(full, created) || self.reflected(group.and_then(|g| g.members_read_at), created) {
                    return Ok("skipped");
                }
                self.refresh_group(directory_id, group_id, budget).await?;
                Ok("refetched")
            }
        }
    }

    /// Re-read a user and the user's groups; rewrite its edges and entitlements.
    async fn refresh_user(&self, dir: &str, uid: &str, budget: &CallBudget) -> Result<(), ProcessError> {
        let read_at = self.clock.now();
        let user = self.api.get_user(dir, uid, budget).await?;
        let (state, groups) = match user {
            None => (UserState::Deleted, Vec::new()),
            Some(u) => (u.state, self.api.list_user_groups(dir, uid, budget).await?),
        };
        let mut renamed = Vec::new();
        for g in &groups {
            if self
                .state
                .put_group(dir, &g.id, Some(&g.name), read_at, false)
                .await?
                .changed
            {
                renamed.push(g.id.clone());
            }
        }
        // Mark the user's groups as read at `read_at` first: from then on no older read can
        // write an edge of this user, so the edges listed next are all there is to correct.
        self.state.put_user_state(dir, uid, &state, read_at, true).await?;
        let now_in: HashSet<&str> = groups.iter().map(|g| g.id.as_str()).collect();
        for g in &groups {
            self.state.put_edge(dir, uid, &g.id, true, read_at).await?;
        }
        for e in self.state.user_edges(dir, uid).await? {
            if e.member && !now_in.contains(e.group_id.as_str()) {
                self.state.put_edge(dir, uid, &e.group_id, false, read_at).await?;
            }
        }
        let mut affected: BTreeSet<String> = BTreeSet::from([uid.to_string()]);
        for gid in renamed {
            affected.extend(self.state.group_member_ids(dir, &gid).await?);
        }
        self.bump_and_recompute(dir, affected).await
    }

    /// Re-read a group and its members; a 404 means the group and its memberships are gone.
    async fn refresh_group(&self, dir: &str, gid: &str, budget: &CallBudget) -> Result<(), ProcessError> {
        let read_at = self.clock.now();
        let group = self.api.get_group(dir, gid, budget).await?;
        let members = match &group {
            None => Vec::new(),
            Some(_) => self.api.list_group_users(dir, gid, budget).await?,
        };
        // Mark the group's members as read first (see `refresh_user`), then list what is stored.
        self.state
            .put_group(dir, gid, group.as_ref().map(|g| g.name.as_str()), read_at, true)
            .await?;
        let stored: BTreeSet<String> = self.state.group_member_ids(dir, gid).await?.into_iter().collect();
        let listed: BTreeSet<String> = members.iter().map(|u| u.id.clone()).collect();
        let states = members
            .iter()
            .map(|u| {
                self.state
                    .put_user_state(dir, &u.id, &u.state, read_at, false)
                    .map_ok(drop)
            })
            .collect::<Vec<_>>();
        all(states, self.config.store_concurrency).await?;
        let changes = listed
            .iter()
            .map(|uid| (uid.as_str(), gid, true))
            .chain(stored.difference(&listed).map(|uid| (uid.as_str(), gid, false)));
        self.write_edges(dir, changes, read_at).await?;
        self.bump_and_recompute(dir, listed.union(&stored).cloned().collect())
            .await
    }

    /// Re-read the whole directory: all groups, all users, every group's members.
    pub async fn reconcile(&self, dir: &str, budget: &CallBudget) -> Result<(), ProcessError> {
        let read_at = self.clock.now();
        let groups = self.api.list_directory_groups(dir, budget).await?;
        let users = self.api.list_directory_users(dir, budget).await?;
        let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
        for g in &groups {
            for u in self.api.list_group_users(dir, &g.id, budget).await? {
                edges.insert((u.id, g.id.clone()));
            }
        }
        // Stamp every listed group and user as read at `read_at` before touching edges, so no
        // older read can add an edge we are about to decide on; then read what is stored.
        let n = self.config.store_concurrency;
        let stamp_groups = groups
            .iter()
            .map(|g| {
                self.state
                    .put_group(dir, &g.id, Some(&g.name), read_at, true)
                    .map_ok(drop)
            })
            .collect::<Vec<_>>();
        all(stamp_groups, n).await?;
        let stamp_users = users
            .iter()
            .map(|u| {
                self.state
                    .put_user_state(dir, &u.id, &u.state, read_at, true)
                    .map_ok(drop)
            })
            .collect::<Vec<_>>();
        all(stamp_users, n).await?;
        let stored = self.state.snapshot(dir).await?;
        let listed_groups: HashSet<&str> = groups.iter().map(|g| g.id.as_str()).collect();
        let gone_groups = stored
            .groups
            .iter()
            .filter(|g| g.name.is_some() && !listed_groups.contains(g.group_id.as_str()))
            .map(|g| self.state.put_group(dir, &g.group_id, None, read_at, true).map_ok(drop))
            .collect::<Vec<_>>();
        all(gone_groups, n).await?;
        let listed_users: HashSet<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let gone_users = stored
            .users
            .iter()
            .filter(|u| !listed_users.contains(u.user_id.as_str()) && u.state.as_ref() != Some(&UserState::Deleted))
            .map(|u| {
                self.state
                    .put_user_state(dir, &u.user_id, &UserState::Deleted, read_at, true)
                    .map_ok(drop)
            })
            .collect::<Vec<_>>();
        all(gone_users, n).await?;
        let removed = stored
            .edges
            .iter()
            .filter(|e| e.member && !edges.contains(&(e.user_id.clone(), e.group_id.clone())))
            .map(|e| (e.user_id.as_str(), e.group_id.as_str(), false));
        let changes = edges
            .iter()
            .map(|(uid, gid)| (uid.as_str(), gid.as_str(), true))
            .chain(removed);
        self.write_edges(dir, changes, read_at).await?;
        let mut affected: BTreeSet<String> = users.iter().map(|u| u.id.clone()).collect();
        affected.extend(stored.users.into_iter().map(|u| u.user_id));
        self.bump_and_recompute(dir, affected).await?;
        self.state.set_full_read_at(dir, read_at).await?;
        Ok(())
    }

    /// Write membership edges `(user, group, member)`. Each write checks its group's item in a
    /// transaction, and transactions on one item conflict: one group's edges go one at a time,
    /// different groups in parallel.
    async fn write_edges<'a>(
        &self,
        dir: &str,
        changes: impl Iterator<Item = (&'a str, &'a str, bool)>,
        read_at: EpochMillis,
    ) -> Result<(), ProcessError> {
        let mut by_group: BTreeMap<&str, Vec<(&str, bool)>> = BTreeMap::new();
        for (uid, gid, member) in changes {
            by_group.entry(gid).or_default().push((uid, member));
        }
        let writes = by_group
            .iter()
            .map(|(gid, members)| self.put_edges_of_group(dir, gid, members, read_at))
            .collect::<Vec<_>>();
        all(writes, self.config.store_concurrency).await
    }

    /// Edges of one group, one at a time (see `write_edges`).
    async fn put_edges_of_group(
        &self,
        dir: &str,
        gid: &str,
        members: &[(&str, bool)],
        read_at: EpochMillis,
    ) -> Result<(), StoreError> {
        for (uid, member) in members {
            self.state.put_edge(dir, uid, gid, *member, read_at).await?;
        }
        Ok(())
    }

    async fn bump_and_recompute(&self, dir: &str, users: BTreeSet<String>) -> Result<(), ProcessError> {
        let results = stream::iter(users.into_iter().map(|uid| async move {
            self.state.bump(dir, &uid).await?;
            self.recompute(dir, &uid).await
        }))
        .buffer_unordered(self.config.store_concurrency)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().collect()
    }

    /// Derive a user's entitlements from stored facts; store them if no fact changed meanwhile.
    pub async fn recompute(&self, dir: &str, uid: &str) -> Result<(), ProcessError> {
        for _ in 0..4 {
            let Some(user) = self.state.user(dir, uid).await? else {
                return Ok(());
            };
            let gids: Vec<String> = self
                .state
                .user_edges(dir, uid)
                .await?
                .into_iter()
                .filter(|e| e.member)
                .map(|e| e.group_id)
                .collect();
            let mut live: Vec<(String, String)> = self
                .state
                .groups(dir, &gids)
                .await?
                .into_iter()
                .filter_map(|g| g.name.map(|n| (g.group_id, n)))
                .collect();
            live.sort();
            let state = user.state.clone().unwrap_or(UserState::Other("unknown".into()));
            let ents: Vec<String> = self
                .config
                .rules
                .entitlements(&state, live.iter().map(|(id, name)| GroupRef { id, name }))
                .into_iter()
                .collect();
            if self
                .state
                .write_entitlements(dir, uid, user.version, &ents, &live, self.clock.now())
                .await?
            {
                return Ok(());
            }
        }
        // Someone bumped the version after us each time; the last to bump recomputes.
        Ok(())
    }
}

/// Run the futures, `n` at a time; the first error wins.
/// (A `Vec`, not an iterator: an iterator's closures held across the await defeat the `Send`
/// inference of the caller's future, a known rustc limitation.)
async fn all<F>(futures: Vec<F>, n: usize) -> Result<(), ProcessError>
where
    F: std::future::Future<Output = Result<(), StoreError>>,
{
    let results: Vec<Result<(), StoreError>> = stream::iter(futures).buffer_unordered(n.max(1)).collect().await;
    results
        .into_iter()
        .collect::<Result<(), StoreError>>()
        .map_err(ProcessError::from)
}

/// A token unique to one claim attempt.
fn claim_token(message_id: &str, now: EpochMillis) -> String {
    format!("{message_id}:{}:{:016x}", now.0, fastrand::u64(..))
}

/// Group claimed events by the action they ask for. When a directory has at least `threshold`
/// per-object events, they become one `Reconcile` of that directory.
fn coalesce(claimed: Vec<Claimed>, threshold: usize) -> Vec<(Action, Vec<Claimed>)> {
    let mut per_dir: BTreeMap<String, usize> = BTreeMap::new();
    for c in &claimed {
        if let Action::RefreshUser { directory_id, .. } | Action::RefreshGroup { directory_id, .. } = &c.event.action {
            *per_dir.entry(directory_id.clone()).or_default() += 1;
        }
    }
    let mut groups: BTreeMap<Action, Vec<Claimed>> = BTreeMap::new();
    for c in claimed {
        let action = match &c.event.action {
            Action::RefreshUser { directory_id, .. } | Action::RefreshGroup { directory_id, .. }
                if per_dir.get(directory_id).copied().unwrap_or(0) >= threshold =>
            {
                Action::Reconcile {
                    directory_id: directory_id.clone(),
                }
            }
            other => other.clone(),
        };
        groups.entry(action).or_default().push(c);
    }
    groups.into_iter().collect()
}

/// A reasonable default reserve before the deadline for releasing claims and answering.
pub const DEFAULT_RESERVE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(i: usize, action: Action) -> Claimed {
        Claimed {
            index: i,
            event: Event {
                id: format!("e{i}"),
                event: "x".into(),
                created_at: None,
                action,
            },
            token: String::new(),
        }
    }

    fn user(d: &str, u: &str) -> Action {
        Action::RefreshUser {
            directory_id: d.into(),
            user_id: u.into(),
        }
    }

    #[test]
    fn same_action_runs_once() {
        let groups = coalesce(
            vec![
                claimed(0, user("d", "u")),
                claimed(1, user("d", "u")),
                claimed(2, user("d", "v")),
            ],
            5,
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].1.len(), 2);
    }

    #[test]
    fn many_events_for_one_directory_become_one_reconcile() {
        let mut batch: Vec<Claimed> = (0..5).map(|i| claimed(i, user("d1", &format!("u{i}")))).collect();
        batch.push(claimed(5, user("d2", "x")));
        batch.push(claimed(
            6,
            Action::Purge {
                directory_id: "d3".into(),
            },
        ));
        let groups = coalesce(batch, 5);
        let actions: Vec<&Action> = groups.iter().map(|(a, _)| a).collect();
        assert!(actions.contains(&&Action::Reconcile {
            directory_id: "d1".into()
        }));
        assert!(actions.contains(&&user("d2", "x")));
        assert!(actions.contains(&&Action::Purge {
            directory_id: "d3".into()
        }));
        let reconcile = groups
            .iter()
            .find(|(a, _)| matches!(a, Action::Reconcile { .. }))
            .map(|(_, v)| v.len());
        assert_eq!(reconcile, Some(5));
    }
}
