//! The convergence property test (issue 8): random directory change scripts, events delivered
//! shuffled, duplicated and partly dropped, several interleaved workers, crashes before or after
//! any port call. At every completion and at the end, the view must match WorkOS.
//!
//! In memory: `CONVERGENCE_CASES` cases (default 500). End to end on moto (DynamoDB through the
//! SDK) and the sandbox over HTTP: `CONVERGENCE_E2E_CASES` (default 20). Each prints its seed;
//! `CONVERGENCE_SEED` replays one (`CONVERGENCE_E2E_FROM=k` starts the end-to-end run at case k).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dsync::adapters::memory::{MemClaims, MemState};
use dsync::clock::{EpochMillis, ManualClock};
use integration_tests::sim::{Knobs, Op, Sim};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use workos_sandbox::direct::DirectApi;
use workos_sandbox::Store;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(|dir| Op::CreateUser { dir }),
        1 => any::<u8>().prop_map(|user| Op::UpdateUser { user }),
        2 => any::<u8>().prop_map(|user| Op::Deactivate { user }),
        1 => any::<u8>().prop_map(|user| Op::Reactivate { user }),
        2 => any::<u8>().prop_map(|user| Op::DeleteUser { user }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(dir, name)| Op::CreateGroup { dir, name }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(group, name)| Op::RenameGroup { group, name }),
        1 => any::<u8>().prop_map(|group| Op::DeleteGroup { group }),
        5 => (any::<u8>(), any::<u8>()).prop_map(|(user, group)| Op::AddMember { user, group }),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(user, group)| Op::RemoveMember { user, group }),
        1 => Just(Op::DeleteDirectory { dir: 0 }).prop_flat_map(|_| any::<u8>().prop_map(|dir| Op::DeleteDirectory { dir })),
        4 => any::<u8>().prop_map(|dir| Op::Reconcile { dir }),
        6 => (1u8..20).prop_map(|ticks| Op::Work { ticks }),
        1 => any::<u8>().prop_map(|secs| Op::Sleep { secs }),
    ]
}

fn script() -> impl Strategy<Value = (Vec<Op>, u64)> {
    (proptest::collection::vec(op(), 3..60), any::<u64>())
}

const START: EpochMillis = EpochMillis(1_800_000_000_000);

/// Totals over every case, printed at the end, to show what the cases exercised.
#[derive(Default, Debug)]
struct Totals {
    cases: u64,
    invocations: u64,
    crashes: u64,
    stalls: u64,
    events_delivered: u64,
    events_completed: u64,
    dropped_dirs: u64,
    directories_deleted: u64,
    runs_finished: u64,
}

static TOTALS: Mutex<Option<Totals>> = Mutex::new(None);

async fn run_memory(ops: &[Op], seed: u64) -> Result<(), String> {
    let clock = ManualClock::at(START);
    let truth = Arc::new(Mutex::new(Store::default()));
    let api = DirectApi::new(truth.clone(), 2);
    let claims = MemClaims::new();
    let state = MemState::new();
    let mut sim = Sim::new(clock, truth, state.clone(), claims.clone(), api, Knobs::default(), seed);
    for op in ops {
        sim.step(op).await;
    }
    let dropped = sim.dropped.len() as u64;
    sim.settle(60_000).await?;
    let problems = sim.verify().await;
    {
        let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let t = t.get_or_insert_with(Totals::default);
        t.cases += 1;
        t.invocations += sim.invocations as u64;
        t.crashes += sim.crashes as u64;
        t.stalls += sim.stalls as u64;
        t.events_delivered += sim.delivered.len() as u64;
        t.events_completed += claims.all().values().filter(|c| c.status == "COMPLETED").count() as u64;
        t.dropped_dirs += dropped;
        t.directories_deleted += sim.dirs.len() as u64 - sim.live_dirs().len() as u64;
        t.runs_finished += state.runs().len() as u64;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Run one script (a shrunk one the property test found) and fail with what it found.
fn replay(ops: &[Op], seed: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run_memory(ops, seed)) {
        panic!("{e}");
    }
}

fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn the_view_converges_to_workos_whatever_the_delivery_order_and_crashes() {
    let n = cases("CONVERGENCE_CASES", 500);
    let seed: u64 = std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("convergence (in memory): {n} cases, seed {seed} (replay with CONVERGENCE_SEED={seed})");
    let mut config = Config::with_cases(n);
    config.failure_persistence = None;
    config.max_shrink_iters = cases("CONVERGENCE_SHRINK", 200);
    config.rng_algorithm = proptest::test_runner::RngAlgorithm::ChaCha;
    let mut runner = TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&seed.to_le_bytes());
            b
        }),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = std::time::Instant::now();
    let result = runner.run(&script(), |(ops, case_seed)| {
        rt.block_on(run_memory(&ops, case_seed))
            .map_err(|e| TestCaseError::fail(format!("case seed {case_seed}, script {ops:?}:\n{e}")))
    });
    println!(
        "convergence (in memory): {n} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "convergence (in memory): exercised {:?}",
        TOTALS.lock().unwrap_or_else(|e| e.into_inner())
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A known scenario, as a smoke test that the harness itself works (and fails when it should):
/// a rename away from a name rule with crashes disabled converges.
#[test]
fn a_plain_rename_converges() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ops = vec![
        Op::Work { ticks: 10 },
        Op::RenameGroup { group: 0, name: 3 },
        Op::Work { ticks: 10 },
    ];
    rt.block_on(async {
        let clock = ManualClock::at(START);
        let truth = Arc::new(Mutex::new(Store::default()));
        let api = DirectApi::new(truth.clone(), 2);
        let knobs = Knobs {
            crash_rate: 0.0,
            drop_rate: 0.0,
            dup_rate: 0.0,
            ..Knobs::default()
        };
        let mut sim = Sim::new(clock, truth, MemState::new(), MemClaims::new(), api, knobs, 7);
        for op in &ops {
            sim.step(op).await;
        }
        sim.settle(200_000).await.expect("settles");
        let problems = sim.verify().await;
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(sim.invocations > 0);
        let _ = Duration::ZERO;
    });
}

/// The same property end to end: DynamoDB (moto) through the AWS SDK for state and claims, the
/// sandbox over HTTP through the real WorkOS client (pages of 2), the same scripts and faults.
#[test]
fn the_view_converges_end_to_end_on_moto_and_the_http_sandbox() {
    use dsync::adapters::dynamo_claims::DynamoClaimStore;
    use dsync::adapters::dynamo_state::DynamoStateStore;
    use dsync::adapters::workos::{WorkosClient, WorkosConfig};
    use workos_sandbox::{Sandbox, SandboxConfig};

    let n = cases("CONVERGENCE_E2E_CASES", 20);
    let seed: u64 = std::env::var("CONVERGENCE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("convergence (moto + HTTP sandbox): {n} cases, seed {seed} (replay with CONVERGENCE_SEED={seed})");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = std::time::Instant::now();
    let mut invocations = 0;
    let mut crashes = 0;
    let mut watchdog = 0;
    // `CONVERGENCE_E2E_FROM=k` (with the printed seed) replays from case k on, skipping the rest.
    let from = cases("CONVERGENCE_E2E_FROM", 0);
    for case in 0..n {
        let case_seed = rng.u64(..);
        if case < from {
            continue;
        }
        let mut ops_rng = fastrand::Rng::with_seed(case_seed);
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &{
                let mut b = [0u8; 32];
                b[..8].copy_from_slice(&ops_rng.u64(..).to_le_bytes());
                b
            }),
        );
        let ops = script().new_tree(&mut runner).expect("script").current().0;
        let result: Result<(), String> = rt.block_on(async {
            let clock = ManualClock::at(START);
            let truth = Arc::new(Mutex::new(Store::default()));
            let sandbox = Sandbox::start(SandboxConfig {
                rate_limit_per_sec: None,
                key_limit_per_minute: None,
                clock: Arc::new(clock.clone()),
                store: Some(truth.clone()),
                ..SandboxConfig::new("sk_test_e2e")
            })
            .await
            .map_err(|e| e.to_string())?;
            let ddb = integration_tests::dynamodb().await;
            let (events, state) = (integration_tests::unique("ev"), integration_tests::unique("st"));
            dsync::schema::create_events_table(&ddb, &events).await?;
            dsync::schema::create_state_table(&ddb, &state).await?;
            let api = WorkosClient::new(
                WorkosConfig {
                    base_url: sandbox.base_url(),
                    directory_users_min_interval: Duration::ZERO,
                    base_backoff: Duration::from_millis(5),
                    deadline_margin: Duration::ZERO,
                    page_limit: 2,
                    ..WorkosConfig::new("sk_test_e2e")
                },
                clock.clone(),
            )
            .map_err(|e| e.to_string())?;
            let knobs = Knobs {
                tick_ms: 0,
                latency_ms: 4,
                real_tick: Some(Duration::from_millis(1)),
                ..Knobs::default()
            };
            let mut sim = Sim::new(
                clock,
                truth,
                DynamoStateStore::new(ddb.clone(), &state),
                DynamoClaimStore::new(ddb, &events),
                api,
                knobs,
                case_seed,
            );
            for op in &ops {
                sim.step(op).await;
            }
            sim.settle(200_000).await?;
            invocations += sim.invocations;
            crashes += sim.crashes;
            watchdog += sim.watchdog_moves;
            let problems = sim.verify().await;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("\n"))
            }
        });
        if let Err(e) = result {
            panic!("case {case} (case seed {case_seed}, script {ops:?}):\n{e}");
        }
    }
    println!(
        "convergence (moto + HTTP sandbox): {n} cases in {:.1} s, {invocations} invocations, {crashes} crashes or stalls, clock moved {watchdog}× by the watchdog",
        started.elapsed().as_secs_f64()
    );
}

/// A script the property test found (shrunk): a holder that lost its lease marked a group as
/// changing after the new holder had finished, and nothing ever cleared the mark (its members stayed
/// unknown to the gate at rest). Fixed by reading again any group still marked when no job runs.
#[test]
fn found_a_group_mark_left_by_a_stale_holder_is_cleared() {
    use Op::*;
    let ops = vec![
        AddMember { user: 0, group: 30 },
        CreateUser { dir: 73 },
        Work { ticks: 7 },
        DeleteDirectory { dir: 61 },
        CreateUser { dir: 0 },
        RenameGroup { group: 0, name: 0 },
        Reconcile { dir: 0 },
        RemoveMember { user: 0, group: 71 },
        RemoveMember { user: 72, group: 123 },
        Reconcile { dir: 14 },
        AddMember { user: 213, group: 53 },
        DeleteDirectory { dir: 49 },
        RemoveMember { user: 110, group: 213 },
        DeleteGroup { group: 63 },
        Reactivate { user: 198 },
        RemoveMember { user: 170, group: 139 },
        Reactivate { user: 23 },
        Work { ticks: 8 },
        Reconcile { dir: 91 },
        CreateUser { dir: 145 },
        Reconcile { dir: 178 },
    ];
    replay(&ops, 1_451_842_033_966_771_557);
}

/// Found by the property test (shrunk): a holder that lost its lease wrote a page of the groups
/// listing late, over the new holder's; the run's stored progress no longer added up, and every
/// chunk failed on it for ever. Fixed: such a job is dropped and its work started again afresh.
#[test]
fn found_an_inconsistent_stored_job_is_started_again() {
    use Op::*;
    let ops = vec![
        Reconcile { dir: 188 },
        DeleteUser { user: 246 },
        CreateGroup { dir: 20, name: 3 },
        CreateGroup { dir: 49, name: 0 },
        Sleep { secs: 5 },
        Reconcile { dir: 6 },
        Deactivate { user: 21 },
        CreateGroup { dir: 43, name: 0 },
        AddMember { user: 34, group: 212 },
        DeleteUser { user: 7 },
        CreateUser { dir: 49 },
        Work { ticks: 10 },
        Reconcile { dir: 189 },
        CreateUser { dir: 250 },
        Work { ticks: 17 },
        Reconcile { dir: 73 },
        RemoveMember { user: 164, group: 64 },
        Work { ticks: 14 },
        DeleteUser { user: 91 },
        DeleteUser { user: 59 },
        DeleteGroup { group: 223 },
        AddMember { user: 73, group: 52 },
        DeleteGroup { group: 225 },
        DeleteGroup { group: 155 },
        RemoveMember { user: 194, group: 159 },
        RenameGroup { group: 182, name: 86 },
        DeleteUser { user: 66 },
        CreateUser { dir: 9 },
        AddMember { user: 56, group: 113 },
        AddMember { user: 52, group: 3 },
        Work { ticks: 5 },
        DeleteGroup { group: 30 },
        Reconcile { dir: 111 },
        RemoveMember { user: 168, group: 59 },
        Work { ticks: 11 },
    ];
    replay(&ops, 13_137_408_880_217_751_070);
}

/// Found by the property test in CI (shrunk): a holder that lost its lease marked a group as
/// changing after a later complete read had been applied; nothing cleared the mark at rest. A mark
/// older than the start of the latest applied full read is moot (that read carried every change
/// to every member): the gate ignores it and the next holder tidies it.
#[test]
fn found_a_mark_older_than_the_last_full_read_is_moot() {
    use Op::*;
    let ops = vec![
        RemoveMember { user: 238, group: 62 },
        CreateGroup { dir: 29, name: 0 },
        AddMember { user: 183, group: 30 },
        Deactivate { user: 228 },
        AddMember { user: 15, group: 30 },
        AddMember { user: 8, group: 62 },
        CreateUser { dir: 254 },
        AddMember { user: 40, group: 135 },
        RemoveMember { user: 187, group: 106 },
        Work { ticks: 10 },
        Reconcile { dir: 108 },
        UpdateUser { user: 246 },
        CreateUser { dir: 104 },
        Work { ticks: 6 },
        AddMember { user: 109, group: 152 },
        AddMember { user: 125, group: 240 },
        Work { ticks: 13 },
        DeleteUser { user: 202 },
        DeleteUser { user: 200 },
        Sleep { secs: 137 },
        DeleteGroup { group: 19 },
        DeleteDirectory { dir: 101 },
        DeleteGroup { group: 62 },
        Sleep { secs: 118 },
        UpdateUser { user: 35 },
        CreateGroup { dir: 225, name: 105 },
        Work { ticks: 3 },
        Reactivate { user: 113 },
        Work { ticks: 7 },
        DeleteUser { user: 127 },
        AddMember { user: 41, group: 107 },
        RemoveMember { user: 144, group: 7 },
        DeleteGroup { group: 204 },
        DeleteUser { user: 243 },
        Work { ticks: 3 },
        Reconcile { dir: 201 },
        Reconcile { dir: 148 },
        UpdateUser { user: 159 },
        DeleteUser { user: 100 },
        Work { ticks: 6 },
        AddMember { user: 118, group: 41 },
        AddMember { user: 141, group: 10 },
        Reconcile { dir: 251 },
        Work { ticks: 9 },
        Work { ticks: 19 },
        Reactivate { user: 155 },
        CreateGroup { dir: 135, name: 130 },
        Work { ticks: 16 },
    ];
    replay(&ops, 16_962_637_798_367_796_275);
}

/// Found by the property test (shrunk): a holder that lost its lease just as it began a
/// reconcile dropped the full-read request it had taken (the request message was already
/// acknowledged), so a dropped webhook's user was never read. The request is now handed back.
#[test]
fn found_a_reconcile_request_survives_a_lost_lease() {
    use Op::*;
    let ops = vec![
        Reconcile { dir: 92 },
        Work { ticks: 1 },
        CreateUser { dir: 104 },
        CreateGroup { dir: 50, name: 0 },
        Work { ticks: 12 },
        DeleteUser { user: 26 },
        RenameGroup { group: 208, name: 59 },
        AddMember { user: 117, group: 29 },
        RenameGroup { group: 133, name: 3 },
        CreateUser { dir: 13 },
        CreateUser { dir: 14 },
        Work { ticks: 11 },
        RenameGroup { group: 135, name: 9 },
        CreateUser { dir: 48 },
        Work { ticks: 17 },
        Reconcile { dir: 109 },
        Reconcile { dir: 176 },
        Work { ticks: 18 },
        CreateUser { dir: 39 },
        Work { ticks: 10 },
        CreateUser { dir: 103 },
        DeleteUser { user: 254 },
    ];
    replay(&ops, 7_474_228_535_893_392_496);
}
