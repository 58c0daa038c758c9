//! The event processor: claim each event once, get its directory's work done by the engine, and
//! complete the event only once its effects are applied; otherwise put it back on the queue.
//!
//! The payload is an invalidation, never the state: an event only names what to re-read.
//!
//! An event is COMPLETED only when a read that reflects it is fully applied: a read of its user
//! (or group, or the whole directory) that began after the event was queued, or `skip_margin`
//! after WorkOS created it (`model::Asked`). Until then its message stays on the queue (deferred
//! with a growing delay), so a crash anywhere loses nothing and acknowledges nothing early.

pub mod config;
pub mod lambda;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::stream::{self, StreamExt};

use crate::clock::{Clock, EpochMillis, EpochSeconds};
use crate::directory::DirectoryApi;
use crate::engine::{Asked as Why, ChunkReport, Engine, Ran, Request};
use crate::model::Asked;
use crate::plan::{parse_message, Action, Event, Message};
use crate::ports::claims::{ClaimRequest, ClaimResult, ClaimStore, Completion};
use crate::ports::queue::WorkQueue;
use crate::ports::state::{Ctl, StateStore};
use crate::ports::StoreError;

pub use config::ProcessorConfig;

/// One queued message, as the SQS event source delivers it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub message_id: String,
    pub body: Option<String>,
    /// `webhook`, `events-api`, `continuation`, `request` or `schedule` (the last three are never claimed:
    /// they carry no WorkOS event).
    pub source: String,
    /// When the queue first accepted the message (SQS `SentTimestamp`).
    pub received_at: Option<EpochMillis>,
    /// How many times it was received (SQS `ApproximateReceiveCount`), this time included.
    pub receive_count: u32,
    /// The receipt handle, to put the message back with a delay.
    pub receipt: Option<String>,
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Applied (or nothing to apply); the label says how: `applied`, `covered`, `ignored`,
    /// `directory_deleted`, `continued`, `requested`.
    Done { event_id: String, how: &'static str },
    /// Already completed (a duplicate delivery): acknowledged.
    Duplicate { event_id: String },
    /// Can never be processed: recorded and acknowledged.
    Invalid { reason: String },
    /// Not applied yet, or failed for a passing reason: back on the queue, after `delay` if given.
    Retry { reason: String, delay: Option<Duration> },
}

impl RecordOutcome {
    pub fn is_failure(&self) -> bool {
        matches!(self, RecordOutcome::Retry { .. })
    }
}

/// What an event needs reflected.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    User(String),
    Group(String),
    Full,
    Purge,
}

/// A claimed event of one directory.
#[derive(Debug, Clone)]
struct Claimed {
    index: usize,
    event: Event,
    token: String,
    target: Target,
    asked: Asked,
}

/// Our own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    Continue,
    Reconcile,
    Purge,
}

/// Everything a batch asks of one directory.
#[derive(Debug, Default)]
struct DirWork {
    events: Vec<Claimed>,
    /// Continuations and requests, by record index.
    own: Vec<(usize, Own)>,
}

/// The processor, generic over its ports.
pub struct Processor<A, C, S, Q, K> {
    engine: Engine<A, S, Q, K>,
    claims: C,
    clock: K,
    config: ProcessorConfig,
}

impl<A, C, S, Q, K> std::fmt::Debug for Processor<A, C, S, Q, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<A, C, S, Q, K> Processor<A, C, S, Q, K>
where
    A: DirectoryApi,
    C: ClaimStore,
    S: StateStore,
    Q: WorkQueue,
    K: Clock + Clone,
{
    pub fn new(api: A, claims: C, state: S, queue: Q, clock: K, config: ProcessorConfig) -> Self {
        let engine = Engine::new(api, state, queue, clock.clone(), config.engine.clone());
        Processor {
            engine,
            claims,
            clock,
            config,
        }
    }

    pub fn state(&self) -> &S {
        self.engine.store()
    }

    pub fn engine(&self) -> &Engine<A, S, Q, K> {
        &self.engine
    }

    pub fn claims(&self) -> &C {
        &self.claims
    }

    fn margin(&self) -> Duration {
        self.config.engine.skip_margin
    }

    /// Process a batch. Returns one outcome per record, in order.
    pub async fn process_batch(&self, records: &[Record], deadline: EpochMillis) -> Vec<RecordOutcome> {
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        let expires_at = self.expires_at();
        let work_deadline = deadline.saturating_sub(self.config.reserve);

        // 1. Parse. A second copy of an event id in the same batch shares the first copy's fate.
        let mut events = Vec::new();
        let mut own: Vec<(usize, String, Own)> = Vec::new();
        let mut first_of: HashMap<String, usize> = HashMap::new();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match r.body.as_deref().map(parse_message) {
                Some(Ok(Message::Event(ev))) => match first_of.get(&ev.id) {
                    Some(&first) => copies.push((i, first)),
                    None => {
                        first_of.insert(ev.id.clone(), i);
                        events.push((i, ev));
                    }
                },
                Some(Ok(Message::Continue { directory_id })) => own.push((i, directory_id, Own::Continue)),
                Some(Ok(Message::Request {
                    directory_id, purge, ..
                })) => own.push((i, directory_id, if purge { Own::Purge } else { Own::Reconcile })),
                Some(Err(e)) => outcomes[i] = Some(self.invalid(&records[i], &e.to_string(), expires_at).await),
                None => outcomes[i] = Some(self.invalid(&records[i], "empty body", expires_at).await),
            }
        }

        // 2. Claim each event id (concurrently).
        let claimed = stream::iter(events.into_iter().map(|(i, ev)| async move {
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

        // 3. Group the claimed events and our own messages by directory.
        let mut dirs: BTreeMap<String, DirWork> = BTreeMap::new();
        for (i, ev, token, result) in claimed {
            match result {
                Ok(ClaimResult::Acquired) => {
                    let (dir, target) = match &ev.action {
                        Action::RefreshUser { directory_id, user_id } => {
                            (directory_id.clone(), Target::User(user_id.clone()))
                        }
                        Action::RefreshGroup { directory_id, group_id } => {
                            (directory_id.clone(), Target::Group(group_id.clone()))
                        }
                        Action::Reconcile { directory_id } => (directory_id.clone(), Target::Full),
                        Action::Purge { directory_id } => (directory_id.clone(), Target::Purge),
                        Action::Ignore => {
                            let c = Claimed {
                                index: i,
                                asked: Asked {
                                    created: ev.created_at,
                                    received: records[i].received_at,
                                },
                                event: ev,
                                token,
                                target: Target::Full,
                            };
                            outcomes[i] = Some(self.complete(&c, "ignored", None, 0, expires_at).await);
                            continue;
                        }
                    };
                    let asked = Asked {
                        created: ev.created_at,
                        received: records[i].received_at,
                    };
                    dirs.entry(dir).or_default().events.push(Claimed {
                        index: i,
                        event: ev,
                        token,
                        target,
                        asked,
                    });
                }
                Ok(ClaimResult::AlreadyDone { .. }) => {
                    tracing::info!(event_id = %ev.id, event_type = %ev.event, outcome = "duplicate", "already processed");
                    outcomes[i] = Some(RecordOutcome::Duplicate { event_id: ev.id });
                }
                Ok(ClaimResult::HeldElsewhere { lease_until }) => {
                    tracing::info!(event_id = %ev.id, lease_until_ms = lease_until.0, outcome = "held", "claimed by another run");
                    outcomes[i] = Some(RecordOutcome::Retry {
                        reason: "claimed by another run".into(),
                        delay: None,
                    });
                }
                Err(e) => {
                    tracing::error!(event_id = %ev.id, error = %e, "claim failed");
                    outcomes[i] = Some(RecordOutcome::Retry {
                        reason: "claim failed".into(),
                        delay: None,
                    });
                }
            }
        }
        for (i, dir, kind) in own {
            dirs.entry(dir).or_default().own.push((i, kind));
        }

        // 4. Each directory's work, several directories at once.
        let results =
            stream::iter(dirs.into_iter().map(|(dir, work)| async move {
                self.directory(&dir, work, records, work_deadline, expires_at).await
            }))
            .buffer_unordered(self.config.concurrency)
            .collect::<Vec<_>>()
            .await;
        for (i, outcome) in results.into_iter().flatten() {
            outcomes[i] = Some(outcome);
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
                    delay: None,
                })
            })
            .collect()
    }

    /// Work one directory: complete what is already reflected, get the rest done (or handed to
    /// the lease holder), then complete what is now reflected and defer the others.
    async fn directory(
        &self,
        dir: &str,
        work: DirWork,
        records: &[Record],
        deadline: EpochMillis,
        expires_at: EpochSeconds,
    ) -> Vec<(usize, RecordOutcome)> {
        let mut out = Vec::new();
        // Already reflected? (No WorkOS call, no lease.)
        let pending = match self.settle(dir, work.events.clone(), None, expires_at, &mut out).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(directory_id = %dir, error = %e, "could not read what is applied");
                for c in &work.events {
                    out.push((c.index, self.defer(c, "store unavailable", None).await));
                }
                for (i, _) in &work.own {
                    out.push((
                        *i,
                        RecordOutcome::Retry {
                            reason: "store unavailable".into(),
                            delay: None,
                        },
                    ));
                }
                return out;
            }
        };
        if pending.is_empty() && work.own.is_empty() {
            return out;
        }
        let mut requests = Vec::new();
        let mut hint: Option<EpochMillis> = None;

        for c in &pending {
            requests.push(match &c.target {
                Target::User(u) => Request::User(u.clone()),
                Target::Group(g) => Request::Group(g.clone()),
                Target::Full => Request::Full {
                    after: self.clock.now(),
                },
                Target::Purge => Request::Purge,
            });
            if let Some(t) = c.asked.created {
                let t = t.saturating_add(self.margin());
                hint = Some(hint.map_or(t, |h| h.max(t)));
            }
        }
        for (_, kind) in &work.own {
            match kind {
                Own::Reconcile => requests.push(Request::Full {
                    after: self.clock.now(),
                }),
                Own::Purge => requests.push(Request::Purge),
                Own::Continue => {}
            }
        }
        // When the latest was queued; unknown for one means unknown for the lot.
        let received = pending
            .iter()
            .map(|c| c.asked.received)
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().max());
        let why = Why { hint, received };
        let ran = self.engine.run(dir, &requests, &why, deadline).await;
        for (i, _) in &work.own {
            out.push((
                *i,
                match &ran {
                    Ok(_) => RecordOutcome::Done {
                        event_id: String::new(),
                        how: "continued",
                    },
                    Err(e) => RecordOutcome::Retry {
                        reason: e.to_string(),
                        delay: Some(self.config.engine.retry_after_failure),
                    },
                },
            ));
        }
        match ran {
            Ok(ran) => {
                let report = match &ran {
                    Ran::Worked(r) | Ran::Failed { report: r, .. } => Some(r.clone()),
                    _ => None,
                };
                let left = match self
                    .settle(dir, pending.clone(), report.as_ref(), expires_at, &mut out)
                    .await
                {
                    Ok(left) => left,
                    Err(e) => {
                        tracing::error!(directory_id = %dir, error = %e, "could not check what is applied");
                        pending
                    }
                };
                for c in left {
                    let delay = self.defer_delay(&ran, &records[c.index]);
                    let reason = match &ran {
                        Ran::Busy => "another worker holds the directory; handed over",
                        Ran::Failed { error, .. } => error.as_str(),
                        _ => "waiting for a read that reflects it",
                    };
                    out.push((c.index, self.defer(&c, reason, delay).await));
                }
            }
            Err(e) => {
                tracing::warn!(directory_id = %dir, error = %e, "directory work failed; events go back on the queue");
                for c in &pending {
                    out.push((
                        c.index,
                        self.defer(c, &e.to_string(), Some(self.config.engine.retry_after_failure))
                            .await,
                    ));
                }
            }
        }
        out
    }

    /// Complete the events whose effects are reflected by applied reads; return the others.
    async fn settle(
        &self,
        dir: &str,
        events: Vec<Claimed>,
        report: Option<&ChunkReport>,
        expires_at: EpochSeconds,
        out: &mut Vec<(usize, RecordOutcome)>,
    ) -> Result<Vec<Claimed>, StoreError> {
        if events.is_empty() {
            return Ok(events);
        }
        let state = self.engine.store();
        let ctl: Ctl = state.ctl(dir).await?;
        let uids: Vec<String> = events
            .iter()
            .filter_map(|c| match &c.target {
                Target::User(u) => Some(u.clone()),
                _ => None,
            })
            .collect();
        let users: HashMap<String, Option<EpochMillis>> = if uids.is_empty() {
            HashMap::new()
        } else {
            state
                .users(dir, &uids)
                .await?
                .into_iter()
                .map(|u| (u.value.user_id, u.value.applied_at))
                .collect()
        };
        let groups: HashMap<String, Option<EpochMillis>> =
            if events.iter().any(|c| matches!(c.target, Target::Group(_))) {
                state
                    .groups(dir)
                    .await?
                    .into_iter()
                    .map(|g| (g.value.group_id, g.value.members_applied_at))
                    .collect()
            } else {
                HashMap::new()
            };
        let margin = self.margin();
        let mut left = Vec::new();
        let mut calls = report.map_or(0, |r| r.workos_calls);
        for c in events {
            let by_full = c.asked.reflected_by(ctl.full_applied_at, margin);
            let (done, how) = if ctl.deleted_at.is_some() {
                (true, "directory_deleted")
            } else {
                let own = match &c.target {
                    Target::User(u) => c.asked.reflected_by(users.get(u).copied().flatten(), margin),
                    Target::Group(g) => c.asked.reflected_by(groups.get(g).copied().flatten(), margin),
                    Target::Full | Target::Purge => false,
                };
                (own || by_full, if report.is_some() { "applied" } else { "covered" })
            };
            if !done {
                left.push(c);
                continue;
            }
            let applied_by = if by_full && ctl.deleted_at.is_none() {
                ctl.last_run.as_ref().map(|r| r.id.clone())
            } else {
                report.map(|r| r.id.clone())
            };
            out.push((
                c.index,
                self.complete(&c, how, applied_by.as_deref(), std::mem::take(&mut calls), expires_at)
                    .await,
            ));
        }
        Ok(left)
    }

    /// How long a deferred event stays away: `defer_min`, doubling with each receive up to
    /// `defer_max`, whether the directory's holder took the request or a longer job (a
    /// reconcile, say) is what it waits for; at `maxReceiveCount` 20 that spans hours, never a
    /// run of quick returns to the dead letters. After a failure, `retry_after_failure`.
    fn defer_delay(&self, ran: &Ran, record: &Record) -> Option<Duration> {
        match ran {
            Ran::Failed { .. } => Some(self.config.engine.retry_after_failure),
            _ => {
                let n = record.receive_count.saturating_sub(1).min(10);
                Some(
                    self.config
                        .defer_min
                        .saturating_mul(1u32 << n)
                        .min(self.config.defer_max),
                )
            }
        }
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
                    delay: None,
                }
            }
        }
    }

    async fn complete(
        &self,
        c: &Claimed,
        how: &'static str,
        applied_by: Option<&str>,
        calls: u32,
        expires_at: EpochSeconds,
    ) -> RecordOutcome {
        let ev = &c.event;
        let done = Completion {
            event_id: &ev.id,
            token: &c.token,
            outcome: how,
            applied_by,
            workos_calls: calls,
            done_at: self.clock.now(),
            expires_at,
        };
        match self.claims.complete(&done).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(event_id = %ev.id, "claim was taken over before completion"),
            // The effects are applied and convergent; a redelivery completes it as covered.
            Err(e) => tracing::error!(event_id = %ev.id, error = %e, "could not mark the claim completed"),
        }
        tracing::info!(
            event_id = %ev.id, event_type = %ev.event, outcome = how, workos_calls = calls,
            applied_by = applied_by.unwrap_or(""), directory_id = ev.action.directory_id().unwrap_or(""),
            "event completed"
        );
        RecordOutcome::Done {
            event_id: ev.id.clone(),
            how,
        }
    }

    /// Release the claim and put the event back on the queue.
    async fn defer(&self, c: &Claimed, reason: &str, delay: Option<Duration>) -> RecordOutcome {
        if let Err(e) = self.claims.release(&c.event.id, &c.token).await {
            tracing::error!(event_id = %c.event.id, error = %e, "could not release the claim; its lease will expire");
        }
        tracing::info!(event_id = %c.event.id, event_type = %c.event.event, outcome = "deferred",
            delay_ms = delay.map(|d| d.as_millis() as u64).unwrap_or(0), reason, "event not applied yet");
        RecordOutcome::Retry {
            reason: reason.to_string(),
            delay,
        }
    }
}

/// A token unique to one claim attempt.
fn claim_token(message_id: &str, now: EpochMillis) -> String {
    format!("{message_id}:{}:{:016x}", now.0, fastrand::u64(..))
}
