//! The scale benchmark (issue 9): the real processor (engine, WorkOS HTTP client, pacing, 429s)
//! against the WorkOS sandbox in its own process, with the in-memory store billing every
//! operation as DynamoDB would (or the DynamoDB adapter on moto), workers standing in for Lambda
//! invocations on an SQS-like fair queue.
//!
//! Time can be scaled: with `speed` = 10 the sandbox allows 4 `/directory_users` requests per
//! 100 ms per directory (40/s), the client paces at 26 ms, and chunks, leases and delays shrink by
//! the same factor, so a run takes a tenth of the time and its bound is computed at the scaled
//! rate. Figures are measured, never estimated; `bench/scale.sh` writes them out.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dsync::adapters::memory::{MemBudget, MemClaims, MemMessage, MemQueue, MemState};
use dsync::adapters::workos::{WorkosClient, WorkosConfig};
use dsync::clock::{Clock, SystemClock};
use dsync::directory::DirectoryApi;
use dsync::ports::claims::ClaimStore;
use dsync::ports::state::{Meter, StateStore};
use dsync::processor::{Processor, ProcessorConfig, Record, RecordOutcome};
use dsync::rules::Rules;
use serde::Deserialize;
use serde_json::{json, Value};

pub const KEY: &str = "sk_test_bench";

/// How fast time runs, and how many workers (Lambda invocations at once).
#[derive(Debug, Clone, Copy)]
pub struct Speed {
    pub factor: u32,
    pub workers: usize,
}

impl Speed {
    fn scale(&self, d: Duration) -> Duration {
        d / self.factor.max(1)
    }
    /// WorkOS's `/directory_users` allowance per directory, per real second.
    pub fn rate(&self) -> f64 {
        4.0 * f64::from(self.factor.max(1))
    }
}

/// The sandbox binary, in its own process (so this process's memory is the pipeline's).
pub struct SandboxProcess {
    child: Child,
    pub base: String,
    http: reqwest::Client,
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScaleSeeded {
    pub directory_id: String,
    pub organization_id: String,
    pub group_ids: Vec<String>,
    pub group_sizes: Vec<usize>,
    pub user_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Stat {
    route: String,
    status: u16,
    count: u64,
}

impl SandboxProcess {
    /// Start `binary` on a free port with the scaled limits.
    pub async fn start(binary: &std::path::Path, speed: Speed) -> Result<SandboxProcess, String> {
        let port = crate::free_port();
        let window = (1000 / speed.factor.max(1)).max(1);
        let child = Command::new(binary)
            .env("SANDBOX_ADDR", format!("127.0.0.1:{port}"))
            .env("SANDBOX_API_KEY", KEY)
            .env("SANDBOX_RATE_LIMIT", "4")
            .env("SANDBOX_RATE_WINDOW_MS", window.to_string())
            .env("SANDBOX_KEY_LIMIT", "6000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        let sb = SandboxProcess {
            child,
            base: base.clone(),
            http: reqwest::Client::new(),
        };
        for _ in 0..200 {
            if sb.http.get(format!("{base}/_sandbox/stats")).send().await.is_ok() {
                return Ok(sb);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("the sandbox did not answer".into())
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{path}: {status} {v}"));
        }
        Ok(v)
    }

    pub async fn seed_scale(
        &self,
        users: usize,
        groups: usize,
        memberships: usize,
        biggest: usize,
    ) -> Result<ScaleSeeded, String> {
        let v = self
            .post(
                "/_sandbox/scale/seed",
                json!({"name": "Scale", "users": users, "groups": groups, "memberships": memberships, "biggest": biggest}),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    pub async fn seed(&self, spec: Value) -> Result<Value, String> {
        self.post("/_sandbox/seed", spec).await
    }

    pub async fn churn(&self, dir: &str, memberships: usize, seed: u64) -> Result<u64, String> {
        let v = self
            .post(
                "/_sandbox/scale/churn",
                json!({"directory": dir, "memberships": memberships, "seed": seed}),
            )
            .await?;
        Ok(v["changed"].as_u64().unwrap_or(0))
    }

    pub async fn burst(&self, dir: &str, group: &str, users: usize) -> Result<Vec<String>, String> {
        let v = self
            .post(
                "/_sandbox/scale/burst",
                json!({"directory": dir, "group": group, "users": users}),
            )
            .await?;
        Ok(v["user_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
            .unwrap_or_default())
    }

    pub async fn set_user_state(&self, uid: &str, state: &str) -> Result<(), String> {
        let r = self
            .http
            .patch(format!("{}/_sandbox/users/{uid}", self.base))
            .json(&json!({"state": state}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("set state: {}", r.status()));
        }
        Ok(())
    }

    /// Every recorded event (raw JSON, oldest first).
    pub async fn events(&self) -> Result<Vec<Value>, String> {
        let v: Value = self
            .http
            .get(format!("{}/_sandbox/events", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    /// (all requests, 429s) since the last reset.
    pub async fn calls(&self) -> Result<(u64, u64), String> {
        let v: Value = self
            .http
            .get(format!("{}/_sandbox/stats", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let rows: Vec<Stat> = serde_json::from_value(v["calls"].clone()).unwrap_or_default();
        let total = rows
            .iter()
            .filter(|r| !r.route.contains("_sandbox"))
            .map(|r| r.count)
            .sum();
        let limited = rows.iter().filter(|r| r.status == 429).map(|r| r.count).sum();
        Ok((total, limited))
    }

    pub async fn reset_calls(&self) -> Result<(), String> {
        self.http
            .delete(format!("{}/_sandbox/stats", self.base))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn client(&self, speed: Speed) -> Result<WorkosClient, String> {
        let cfg = WorkosConfig {
            base_url: self.base.clone(),
            directory_users_min_interval: speed.scale(Duration::from_millis(260)),
            deadline_margin: speed.scale(Duration::from_millis(1500)),
            base_backoff: speed.scale(Duration::from_millis(250)),
            max_backoff: speed.scale(Duration::from_secs(5)),
            ..WorkosConfig::new(KEY)
        };
        // The per-key budget: 5,400 a minute (90 a second), per scaled second.
        let budget = MemBudget::new(90, speed.scale(Duration::from_secs(1)));
        WorkosClient::with_budget(cfg, SystemClock, budget).map_err(|e| e.to_string())
    }
}

/// Processor settings scaled like the sandbox.
pub fn config(rules: Rules, speed: Speed) -> ProcessorConfig {
    let mut c = ProcessorConfig::with_rules(rules);
    c.engine.chunk = speed.scale(Duration::from_secs(25));
    c.engine.lease_grace = speed.scale(Duration::from_secs(20));
    c.engine.step_reserve = speed.scale(Duration::from_secs(3));
    c.engine.skip_margin = speed.scale(Duration::from_secs(5));
    c.engine.debounce_max = speed.scale(Duration::from_secs(60));
    c.engine.retry_after_failure = speed.scale(Duration::from_secs(30));
    c.reserve = speed.scale(Duration::from_secs(3));
    c.defer_min = speed.scale(Duration::from_secs(5));
    c.defer_max = speed.scale(Duration::from_secs(900));
    c
}

/// What the workers did.
#[derive(Debug, Default)]
pub struct Work {
    pub invocations: AtomicU64,
    /// Messages handed to invocations (an event deferred twice counts three times).
    pub records: AtomicU64,
    pub longest_ms: AtomicU64,
    pub completed: AtomicU64,
}

/// Workers standing in for concurrent Lambda invocations: receive up to 10 messages, run the
/// handler's logic with a scaled 60 s deadline, delete what was done, defer what was put back.
pub fn spawn_workers<A, C, S>(
    processor: Arc<Processor<A, C, S, MemQueue, SystemClock>>,
    queue: MemQueue,
    speed: Speed,
    stop: Arc<AtomicBool>,
    work: Arc<Work>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    A: DirectoryApi,
    C: ClaimStore,
    S: StateStore,
{
    (0..speed.workers)
        .map(|_| {
            let (p, q, stop, work) = (processor.clone(), queue.clone(), stop.clone(), work.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let msgs: Vec<MemMessage> = q.receive(10);
                    if msgs.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let records: Vec<Record> = msgs.iter().map(MemMessage::record).collect();
                    let started = Instant::now();
                    let deadline = SystemClock.now().saturating_add(speed.scale(Duration::from_secs(60)));
                    let out = p.process_batch(&records, deadline).await;
                    let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                    work.invocations.fetch_add(1, Ordering::Relaxed);
                    work.records.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                    work.longest_ms.fetch_max(took, Ordering::Relaxed);
                    for (m, o) in msgs.iter().zip(out) {
                        match o {
                            RecordOutcome::Retry { delay: Some(d), .. } => {
                                q.set_visibility(&m.receipt, d);
                            }
                            RecordOutcome::Retry { delay: None, .. } => {}
                            RecordOutcome::Done { .. } => {
                                work.completed.fetch_add(1, Ordering::Relaxed);
                                q.delete(&m.receipt);
                            }
                            _ => {
                                q.delete(&m.receipt);
                            }
                        }
                    }
                }
            })
        })
        .collect()
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One reconcile's measurements.
#[derive(Debug, Clone)]
pub struct ReconcileFigures {
    pub label: String,
    pub wall: Duration,
    /// `/directory_users` pages the run needs ÷ the allowed rate.
    pub bound: Duration,
    pub workos_calls: u64,
    pub throttled: u64,
    pub read_units: u64,
    pub write_units: u64,
    pub records_written: u64,
    pub differences: u64,
    pub items: u64,
    pub invocations: u64,
    pub longest_invocation: Duration,
    pub chunks: u32,
    pub peak_rss_kib: Option<u64>,
}

impl ReconcileFigures {
    pub fn line(&self) -> String {
        format!(
            "{}: wall {:.1} s vs bound {:.1} s ({:.2}x); WorkOS calls {} ({} 429s); DynamoDB {} RU, {} WU; \
             records written {} of {} items ({:.3}%), differences {}; invocations {} (longest {:.2} s), chunks {}; peak RSS {} MiB",
            self.label,
            self.wall.as_secs_f64(),
            self.bound.as_secs_f64(),
            self.wall.as_secs_f64() / self.bound.as_secs_f64().max(1e-9),
            self.workos_calls,
            self.throttled,
            self.read_units,
            self.write_units,
            self.records_written,
            self.items,
            100.0 * self.records_written as f64 / (self.items.max(1) as f64),
            self.differences,
            self.invocations,
            self.longest_invocation.as_secs_f64(),
            self.chunks,
            self.peak_rss_kib.map_or("?".into(), |k| (k / 1024).to_string()),
        )
    }
}

/// `/directory_users` pages a full read of this shape needs.
pub fn pages_needed(users: usize, group_sizes: &[usize]) -> u64 {
    let pages = |n: usize| n.div_ceil(100).max(1) as u64;
    pages(users) + group_sizes.iter().map(|&n| pages(n)).sum::<u64>()
}

/// Ask for a reconcile and run the workers until it is applied.
#[allow(clippy::too_many_arguments)]
pub async fn run_reconcile<A, C, S>(
    label: &str,
    processor: Arc<Processor<A, C, S, MemQueue, SystemClock>>,
    queue: &MemQueue,
    meter: &Arc<Meter>,
    sandbox: &SandboxProcess,
    dir: &str,
    needed_pages: u64,
    items: u64,
    speed: Speed,
) -> Result<ReconcileFigures, String>
where
    A: DirectoryApi,
    C: ClaimStore,
    S: StateStore,
{
    sandbox.reset_calls().await?;
    let (r0, w0) = (meter.read_units(), meter.write_units());
    let runs0 = processor
        .state()
        .ctl(dir)
        .await
        .map_err(|e| e.to_string())?
        .last_run
        .map(|r| r.id);
    let started = Instant::now();
    let asked_at = SystemClock.now();
    queue.send(
        dsync::plan::request_body(dir, asked_at),
        Some(dir),
        "request",
        Duration::ZERO,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(Work::default());
    let workers = spawn_workers(processor.clone(), queue.clone(), speed, stop.clone(), work.clone());
    let ctl = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ctl = processor.state().ctl(dir).await.map_err(|e| e.to_string())?;
        let done = ctl.full_applied_at.is_some_and(|t| t >= asked_at)
            && ctl.last_run.as_ref().map(|r| &r.id) != runs0.as_ref();
        if done {
            break ctl;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(format!("{label}: not applied within an hour"));
        }
    };
    let wall = started.elapsed();
    // Let the request message itself complete, then stop.
    let settle = Instant::now();
    while !queue.is_empty() && settle.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let (calls, throttled) = sandbox.calls().await?;
    let run = ctl.last_run.ok_or("no run summary")?;
    Ok(ReconcileFigures {
        label: label.to_string(),
        wall,
        bound: Duration::from_secs_f64(needed_pages as f64 / speed.rate()),
        workos_calls: calls,
        throttled,
        read_units: meter.read_units() - r0,
        write_units: meter.write_units() - w0,
        records_written: run.stats.records_written,
        differences: run.stats.differences(),
        items,
        invocations: work.invocations.load(Ordering::Relaxed),
        longest_invocation: Duration::from_millis(work.longest_ms.load(Ordering::Relaxed)),
        chunks: run.chunks,
        peak_rss_kib: peak_rss_kib(),
    })
}

/// The in-memory pipeline: processor, queue, store, claims, meter.
pub struct MemPipeline {
    pub processor: Arc<Processor<WorkosClient, MemClaims, MemState, MemQueue, SystemClock>>,
    pub queue: MemQueue,
    pub state: MemState,
    pub claims: MemClaims,
    pub meter: Arc<Meter>,
}

pub fn mem_pipeline(sandbox: &SandboxProcess, rules: Rules, speed: Speed) -> Result<MemPipeline, String> {
    let meter = Meter::new();
    let state = MemState::new();
    let claims = MemClaims::new();
    let queue = MemQueue::new(SystemClock, speed.scale(Duration::from_secs(360)), 1000);
    let processor = Arc::new(Processor::new(
        sandbox.client(speed)?,
        claims.clone(),
        state.metered(meter.clone()),
        queue.clone(),
        SystemClock,
        config(rules, speed),
    ));
    Ok(MemPipeline {
        processor,
        queue,
        state,
        claims,
        meter,
    })
}

/// Full, unchanged and 1%-changed reconciles of a directory of this shape.
pub async fn reconcile_scenario(
    sandbox_bin: &std::path::Path,
    users: usize,
    groups: usize,
    memberships: usize,
    biggest: usize,
    speed: Speed,
) -> Result<Vec<ReconcileFigures>, String> {
    let sb = SandboxProcess::start(sandbox_bin, speed).await?;
    let seeded = sb.seed_scale(users, groups, memberships, biggest).await?;
    let rules = Rules::parse(&format!(
        r#"{{"organizations":{{"{}":{{"by_group_name":{{"Group 0":["feature-x"],"Group 1":["feature-y"]}}}}}}}}"#,
        seeded.organization_id
    ))
    .map_err(|e| e.to_string())?;
    let p = mem_pipeline(&sb, rules, speed)?;
    let dir = seeded.directory_id.clone();
    let needed = pages_needed(seeded.user_ids.len(), &seeded.group_sizes);
    let items = (seeded.user_ids.len() + seeded.group_ids.len() + seeded.group_sizes.iter().sum::<usize>()) as u64;
    let mut out = Vec::new();
    out.push(
        run_reconcile(
            "full (initial) reconcile",
            p.processor.clone(),
            &p.queue,
            &p.meter,
            &sb,
            &dir,
            needed,
            items,
            speed,
        )
        .await?,
    );
    out.push(
        run_reconcile(
            "unchanged reconcile",
            p.processor.clone(),
            &p.queue,
            &p.meter,
            &sb,
            &dir,
            needed,
            items,
            speed,
        )
        .await?,
    );
    let churned = sb.churn(&dir, memberships / 100, 7).await?;
    let sizes = {
        // Sizes after the churn, for the bound: read them back from the store is what the run
        // does; the bound uses the same listing shape up to the churn, which is ±1%.
        seeded.group_sizes.clone()
    };
    let needed = pages_needed(seeded.user_ids.len(), &sizes);
    let mut changed = run_reconcile(
        &format!("reconcile after {churned} membership changes (1%)"),
        p.processor.clone(),
        &p.queue,
        &p.meter,
        &sb,
        &dir,
        needed,
        items,
        speed,
    )
    .await?;
    changed.label = format!(
        "{} [store footprint {} MiB]",
        changed.label,
        p.state.bytes() / (1 << 20)
    );
    out.push(changed);
    Ok(out)
}

/// The onboarding burst, its baselines, and another directory's latency meanwhile.
#[derive(Debug, Clone)]
pub struct BurstFigures {
    pub events: usize,
    pub converged_after_last_delivery: Duration,
    pub workos_calls: u64,
    pub throttled: u64,
    pub calls_per_100_events: f64,
    pub baseline_refetch_per_100: f64,
    pub baseline_list_all_per_100: f64,
    pub other_directory_latency: Duration,
    pub invocations: u64,
    pub records: u64,
    pub longest_invocation: Duration,
    pub peak_rss_kib: Option<u64>,
}

impl BurstFigures {
    pub fn line(&self) -> String {
        format!(
            "burst of {} events: view equal to WorkOS {:.2} s after the last delivery; WorkOS calls {} ({} 429s) = {:.2} per 100 events \
             (baselines: one re-fetch per event {:.1}, list all users per user event {:.1}); another directory's event applied in {:.2} s \
             during the burst; invocations {} with {} messages ({:.2} receives per event; longest {:.2} s); peak RSS {} MiB",
            self.events,
            self.converged_after_last_delivery.as_secs_f64(),
            self.workos_calls,
            self.throttled,
            self.calls_per_100_events,
            self.baseline_refetch_per_100,
            self.baseline_list_all_per_100,
            self.other_directory_latency.as_secs_f64(),
            self.invocations,
            self.records,
            self.records as f64 / self.events.max(1) as f64,
            self.longest_invocation.as_secs_f64(),
            self.peak_rss_kib.map_or("?".into(), |k| (k / 1024).to_string()),
        )
    }
}

fn queue_event(q: &MemQueue, ev: &Value) {
    let dir = ev["data"]["directory_id"]
        .as_str()
        .or_else(|| ev["data"]["id"].as_str())
        .unwrap_or("no-directory")
        .to_string();
    q.send(ev.to_string(), Some(&dir), "webhook", Duration::ZERO);
}

pub async fn burst_scenario(sandbox_bin: &std::path::Path, users: usize, speed: Speed) -> Result<BurstFigures, String> {
    let sb = SandboxProcess::start(sandbox_bin, speed).await?;
    let a = sb
        .seed(json!({"name": "Onboarding", "groups": [{"name": "Staff", "users": 10}]}))
        .await?;
    let b = sb
        .seed(json!({"name": "Other", "groups": [{"name": "Admins", "users": 10}]}))
        .await?;
    let (dir_a, dir_b) = (
        a["directory_id"].as_str().unwrap_or_default().to_string(),
        b["directory_id"].as_str().unwrap_or_default().to_string(),
    );
    let staff = a["groups"][0]["id"].as_str().unwrap_or_default().to_string();
    let b_user = b["groups"][0]["user_ids"][0].as_str().unwrap_or_default().to_string();
    let rules = Rules::parse(&format!(
        r#"{{"organizations":{{"{}":{{"by_group_name":{{"Staff":["feature-x"]}}}},"{}":{{"by_group_name":{{"Admins":["admin-console"]}}}}}}}}"#,
        a["organization_id"].as_str().unwrap_or_default(),
        b["organization_id"].as_str().unwrap_or_default()
    ))
    .map_err(|e| e.to_string())?;
    let p = mem_pipeline(&sb, rules, speed)?;
    // Both directories fully read first (their initial syncs).
    for d in [&dir_a, &dir_b] {
        run_reconcile("initial", p.processor.clone(), &p.queue, &p.meter, &sb, d, 2, 20, speed).await?;
    }
    let before = sb.events().await?.len();
    let new_users = sb.burst(&dir_a, &staff, users).await?;
    let events: Vec<Value> = sb.events().await?.split_off(before);
    sb.reset_calls().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(Work::default());
    let workers = spawn_workers(p.processor.clone(), p.queue.clone(), speed, stop.clone(), work.clone());
    // Deliver the burst (all of it: as fast as the receiver lets it in), then one event of B.
    for ev in &events {
        queue_event(&p.queue, ev);
    }
    let last_delivery = Instant::now();
    tokio::time::sleep(speed.scale(Duration::from_secs(2))).await;
    let before_b = sb.events().await?.len();
    sb.set_user_state(&b_user, "inactive").await?;
    let b_events: Vec<Value> = sb.events().await?.split_off(before_b);
    let b_sent = Instant::now();
    for ev in &b_events {
        queue_event(&p.queue, ev);
    }
    let reader = dsync::view::EntitlementReader::new(p.state.clone());
    let mut b_latency = None;
    let mut converged = None;
    let want = new_users.len() + 10;
    let started = Instant::now();
    let mut polls = 0u64;
    while converged.is_none() || b_latency.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        polls += 1;
        if b_latency.is_none() {
            if let Ok(dsync::view::Lookup::Found(v)) = reader.user(&dir_b, &b_user).await {
                if v.decide("admin-console") == dsync::view::Decision::Denied {
                    b_latency = Some(b_sent.elapsed());
                }
            }
        }
        // The whole directory is read every 100 ms only (it is the harness's cost, not the pipeline's).
        if converged.is_none() && polls.is_multiple_of(10) {
            let users = reader.directory(&dir_a).await.map_err(|e| e.to_string())?;
            let granted = users.iter().filter(|u| u.allows("feature-x")).count();
            if granted == want {
                converged = Some(last_delivery.elapsed());
            }
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(format!("burst did not converge: {converged:?} {b_latency:?}"));
        }
    }
    // Wait for every event to be completed (deferred ones come back), then count.
    let settle = Instant::now();
    while !p.queue.is_empty() && settle.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let (calls, throttled) = sb.calls().await?;
    let n = events.len();

    // Baseline 1: one re-fetch (user + its groups) per event, measured on a sample.
    let client = sb.client(speed)?;
    let sample: Vec<&Value> = events.iter().take(200).collect();
    sb.reset_calls().await?;
    let budget = dsync::directory::CallBudget::until(SystemClock.now().saturating_add(Duration::from_secs(3600)));
    for ev in &sample {
        let uid = ev["data"]["user"]["id"]
            .as_str()
            .or_else(|| ev["data"]["id"].as_str())
            .unwrap_or_default();
        let _ = client.get_user(&dir_a, uid, &budget).await;
        let _ = client.user_groups(&dir_a, uid, &budget).await;
    }
    let (refetch_calls, _) = sb.calls().await?;
    // Baseline 2: list every user of the directory on every user event (the seed's handler).
    let user_events: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "dsync.user.created")
        .take(5)
        .collect();
    sb.reset_calls().await?;
    for _ in &user_events {
        let mut after: Option<String> = None;
        while let Ok(Some(page)) = client
            .users_page(&dir_a, dsync::directory::Listing::Directory, after.as_deref(), &budget)
            .await
        {
            match page.after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
    }
    let (list_calls, _) = sb.calls().await?;
    let user_share = events.iter().filter(|e| e["event"] == "dsync.user.created").count() as f64 / n.max(1) as f64;
    Ok(BurstFigures {
        events: n,
        converged_after_last_delivery: converged.unwrap_or_default(),
        workos_calls: calls,
        throttled,
        calls_per_100_events: 100.0 * calls as f64 / n.max(1) as f64,
        baseline_refetch_per_100: 100.0 * refetch_calls as f64 / sample.len().max(1) as f64,
        baseline_list_all_per_100: 100.0 * user_share * list_calls as f64 / user_events.len().max(1) as f64,
        other_directory_latency: b_latency.unwrap_or_default(),
        invocations: work.invocations.load(Ordering::Relaxed),
        records: work.records.load(Ordering::Relaxed),
        longest_invocation: Duration::from_millis(work.longest_ms.load(Ordering::Relaxed)),
        peak_rss_kib: peak_rss_kib(),
    })
}

/// A full reconcile with the DynamoDB adapter on moto (its wall time is moto's).
pub async fn moto_scenario(
    sandbox_bin: &std::path::Path,
    users: usize,
    speed: Speed,
) -> Result<ReconcileFigures, String> {
    use dsync::adapters::dynamo_claims::DynamoClaimStore;
    use dsync::adapters::dynamo_state::DynamoStateStore;
    let sb = SandboxProcess::start(sandbox_bin, speed).await?;
    let groups = (users / 100).max(2);
    let seeded = sb.seed_scale(users, groups, users * 3, users / 2).await?;
    let ddb = crate::dynamodb().await;
    let (ev, st) = (crate::unique("bench-ev"), crate::unique("bench-st"));
    dsync::schema::create_events_table(&ddb, &ev).await?;
    dsync::schema::create_state_table(&ddb, &st).await?;
    let rules = Rules::parse(&format!(
        r#"{{"organizations":{{"{}":{{"by_group_name":{{"Group 0":["feature-x"]}}}}}}}}"#,
        seeded.organization_id
    ))
    .map_err(|e| e.to_string())?;
    let meter = Meter::new();
    let queue = MemQueue::new(SystemClock, speed.scale(Duration::from_secs(360)), 1000);
    let processor = Arc::new(Processor::new(
        sb.client(speed)?,
        DynamoClaimStore::new(ddb.clone(), &ev),
        DynamoStateStore::new(ddb, &st).metered(meter.clone()),
        queue.clone(),
        SystemClock,
        config(rules, speed),
    ));
    let needed = pages_needed(seeded.user_ids.len(), &seeded.group_sizes);
    let items = (seeded.user_ids.len() + seeded.group_ids.len() + seeded.group_sizes.iter().sum::<usize>()) as u64;
    run_reconcile(
        &format!("{users}-user full reconcile on moto (DynamoDB adapter; wall time is moto's)"),
        processor,
        &queue,
        &meter,
        &sb,
        &seeded.directory_id,
        needed,
        items,
        speed,
    )
    .await
}
