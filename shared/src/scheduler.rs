//! The scheduler (issue 10): directory discovery, scheduled reconciliation and a watchdog, in one
//! run every few hours.
//!
//! - Every directory WorkOS lists (`GET /directories`, every page) whose state is active gets a
//!   reconcile request on the events queue (`plan::request_body`, message group = directory id,
//!   `source=schedule`), so it goes through the same per-directory lease and shared WorkOS budget
//!   as events. A directory seen for the first time gets the same request: the engine's first
//!   full read of a directory is its initial sync.
//! - A directory in our registry (not deleted) that WorkOS no longer lists, and whose
//!   `GET /directories/{id}` answers 404, gets a purge request (`plan::purge_body`): it is
//!   tombstoned and its data deleted. Only after a complete listing; and if more than half the
//!   registered directories (and more than two) would go at once, none is purged: that looks like
//!   a wrong API key, not deletions ([`ScheduleReport::purges_refused`]).
//! - Watchdog: every registered directory whose fence holds a job that nobody has worked on for
//!   `stale_job_after` (its lease ended that long ago) gets a continuation, so no job is left
//!   behind when a continuation message was lost. A duplicate continuation is harmless.
//!
//! Each reconcile leaves its record (`StateStore::put_run`; the engine logs `job finished` with
//! `differences` and `initial`): the `ReconcileDifferences` metric in `infra/template.yaml` counts
//! the differences of non-initial reconciles.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::clock::{Clock, EpochMillis};
use crate::config::{ConfigError, Env};
use crate::directory::{is_active_state, ApiError, CallBudget, DirectoryApi, DirectoryList};
use crate::events_poller::request_message;
use crate::ports::queue::{Outbox, Outgoing, WorkQueue, WorkQueueError};
use crate::ports::state::{Registered, StateStore};
use crate::ports::StoreError;
use crate::worker::WorkerEnv;

/// The `source` attribute of the scheduler's requests.
pub const SOURCE: &str = "schedule";

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A job whose lease ended this long ago gets a continuation.
    pub stale_job_after: Duration,
    /// No WorkOS page starts when less than this is left before the deadline.
    pub reserve: Duration,
    /// Registry entries read per page.
    pub registry_page: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            stale_job_after: Duration::from_secs(600),
            reserve: Duration::from_secs(5),
            registry_page: 100,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleReport {
    /// Directories WorkOS listed.
    pub listed: u32,
    /// Every page of `GET /directories` was read (purges need it).
    pub listing_complete: bool,
    /// Registry entries (deleted ones included).
    pub registered: u32,
    pub reconciles: u32,
    /// Directories listed that the registry did not hold yet (their reconcile is an initial sync).
    pub new_directories: u32,
    /// Listed directories not active (`validating`, `invalid_credentials`, `unlinked`, `deleting`).
    pub inactive: u32,
    pub purges: u32,
    /// Purges not sent because too many directories would have gone at once.
    pub purges_refused: u32,
    /// Continuations sent by the watchdog.
    pub continuations: u32,
    pub workos_calls: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] WorkQueueError),
}

/// The scheduler, generic over its ports.
pub struct Scheduler<A, S, Q, K> {
    api: A,
    store: S,
    queue: Q,
    clock: K,
    cfg: SchedulerConfig,
}

impl<A, S, Q, K> std::fmt::Debug for Scheduler<A, S, Q, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<A, S, Q, K> Scheduler<A, S, Q, K>
where
    A: DirectoryApi + DirectoryList,
    S: StateStore,
    Q: Outbox + WorkQueue,
    K: Clock,
{
    pub fn new(api: A, store: S, queue: Q, clock: K, cfg: SchedulerConfig) -> Self {
        Scheduler {
            api,
            store,
            queue,
            clock,
            cfg,
        }
    }

    /// One run, ending before `deadline`.
    pub async fn run(&self, deadline: EpochMillis) -> Result<ScheduleReport, ScheduleError> {
        let mut report = ScheduleReport::default();
        let budget = CallBudget::until(deadline);
        let registry = self.registry().await?;
        report.registered = registry.len() as u32;

        // The watchdog first: it needs neither WorkOS nor a complete listing.
        report.continuations = self.watchdog(&registry).await?;

        let (listed, complete) = self.list(&budget, deadline).await?;
        report.listed = listed.len() as u32;
        report.listing_complete = complete;
        let known: BTreeSet<&str> = registry.iter().map(|r| r.directory_id.as_str()).collect();
        let now = self.clock.now();
        let mut messages: Vec<Outgoing> = Vec::new();
        for d in &listed {
            if !is_active_state(&d.state) {
                report.inactive += 1;
                tracing::info!(directory_id = %d.id, state = %d.state, "directory not active: not reconciled");
                continue;
            }
            if !known.contains(d.id.as_str()) {
                report.new_directories += 1;
                tracing::info!(directory_id = %d.id, "new directory: its reconcile is its initial sync");
            }
            messages.push(request_message(&d.id, crate::plan::request_body(&d.id, now), SOURCE));
            report.reconciles += 1;
        }

        if complete {
            let listed_ids: BTreeSet<&str> = listed.iter().map(|d| d.id.as_str()).collect();
            let live: Vec<&Registered> = registry.iter().filter(|r| !r.deleted).collect();
            let missing: Vec<&str> = live
                .iter()
                .map(|r| r.directory_id.as_str())
                .filter(|d| !listed_ids.contains(d))
                .collect();
            if missing.len() > 2 && missing.len() * 2 > live.len() {
                report.purges_refused = missing.len() as u32;
                tracing::error!(
                    purge_refused = true,
                    missing = missing.len(),
                    registered = live.len(),
                    "WorkOS no longer lists most of our directories: refusing to purge any (wrong API key or environment?)"
                );
            } else {
                for dir in missing {
                    // Confirm with the directory itself: a listing glitch must not purge.
                    match self.api.get_directory(dir, &budget).await? {
                        None => {
                            tracing::warn!(directory_id = %dir, "directory gone from WorkOS: purge requested");
                            messages.push(request_message(dir, crate::plan::purge_body(dir, now), SOURCE));
                            report.purges += 1;
                        }
                        Some(_) => {
                            tracing::warn!(directory_id = %dir, "directory not listed but still found: not purged");
                        }
                    }
                }
            }
        } else {
            tracing::warn!("the directory listing did not finish before the deadline: no purge this run");
        }
        self.queue.send_all(&messages).await?;
        report.workos_calls = budget.calls();
        tracing::info!(
            outcome = "scheduled",
            listed = report.listed,
            reconciles = report.reconciles,
            new_directories = report.new_directories,
            inactive = report.inactive,
            purges = report.purges,
            purges_refused = report.purges_refused,
            continuations = report.continuations,
            workos_calls = report.workos_calls,
            "schedule run done"
        );
        Ok(report)
    }

    /// The whole registry.
    async fn registry(&self) -> Result<Vec<Registered>, ScheduleError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.registered(after.as_deref(), self.cfg.registry_page).await?;
            all.extend(page.items);
            match page.after {
                Some(a) => after = Some(a),
                None => return Ok(all),
            }
        }
    }

    /// Every page of `GET /directories` that fits before the deadline; `true` when complete.
    async fn list(
        &self,
        budget: &CallBudget,
        deadline: EpochMillis,
    ) -> Result<(Vec<crate::directory::DirInfo>, bool), ScheduleError> {
        let mut listed = Vec::new();
        let mut seen = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            if self.clock.now().saturating_add(self.cfg.reserve) >= deadline {
                return Ok((listed, false));
            }
            let page = self.api.directories_page(after.as_deref(), budget).await?;
            listed.extend(page.items);
            match page.after {
                None => return Ok((listed, true)),
                Some(a) => {
                    if !seen.insert(a.clone()) {
                        return Err(ApiError::BadResponse("GET /directories repeated a cursor".into()).into());
                    }
                    after = Some(a);
                }
            }
        }
    }

    /// A continuation for every directory whose job nobody has worked on for `stale_job_after`.
    async fn watchdog(&self, registry: &[Registered]) -> Result<u32, ScheduleError> {
        let now = self.clock.now();
        let mut sent = 0;
        for r in registry {
            let Some(fence) = self.store.fence(&r.directory_id).await? else {
                continue;
            };
            let f = &fence.value;
            let Some(job) = &f.job else { continue };
            // The lease ends after the chunk that holds it: past it plus the margin, nobody works.
            if f.lease_until.saturating_add(self.cfg.stale_job_after) > now {
                continue;
            }
            tracing::warn!(
                directory_id = %r.directory_id,
                run = %job.id,
                idle_s = now.abs_diff(f.lease_until).as_secs(),
                "job left behind: continuation sent"
            );
            self.queue.continue_later(&r.directory_id, Duration::ZERO).await?;
            sent += 1;
        }
        Ok(sent)
    }
}

pub const ENV_STALE_JOB_MINUTES: &str = "SCHEDULER_STALE_JOB_MINUTES";

/// Everything the scheduler's `main` needs.
#[derive(Debug, Clone)]
pub struct SchedulerEnv {
    pub worker: WorkerEnv,
    pub config: SchedulerConfig,
}

impl SchedulerEnv {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let worker = WorkerEnv::from_env(env)?;
        let stale: u64 = env.parsed_or(ENV_STALE_JOB_MINUTES, 10)?;
        if !(1..=1440).contains(&stale) {
            return Err(ConfigError::Invalid {
                name: ENV_STALE_JOB_MINUTES,
                why: "must be 1 to 1440 minutes".into(),
            });
        }
        Ok(SchedulerEnv {
            worker,
            config: SchedulerConfig {
                stale_job_after: Duration::from_secs(stale * 60),
                ..SchedulerConfig::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn config() {
        let base: HashMap<String, String> = [
            ("STATE_TABLE", "state"),
            ("EVENTS_QUEUE_URL", "http://127.0.0.1:4566/123456789012/q"),
            ("WORKOS_API_KEY", "sk_test_secretkey"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let e = SchedulerEnv::from_env(&base).expect("config");
        assert_eq!(e.config.stale_job_after, Duration::from_secs(600));
        assert!(!format!("{e:?}").contains("secretkey"));
        let mut m = base.clone();
        m.insert(ENV_STALE_JOB_MINUTES.into(), "0".into());
        assert!(matches!(
            SchedulerEnv::from_env(&m),
            Err(ConfigError::Invalid {
                name: ENV_STALE_JOB_MINUTES,
                ..
            })
        ));
    }
}
