//! The scale benchmark in small (2,000 users), so it cannot rot: the same harness as
//! `bench/scale.sh`, asserting only what must hold at any size (it converges, an unchanged
//! directory costs no fact writes, the rate limit is respected), never timings.

use integration_tests::bench::{burst_scenario, reconcile_scenario, Speed};
use integration_tests::built_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_benchmark_runs_small() {
    let speed = Speed { factor: 10, workers: 4 };
    let sandbox = built_binary("workos-sandbox");
    let figures = reconcile_scenario(&sandbox, 2000, 20, 6000, 1000, speed)
        .await
        .expect("reconcile scenario");
    for f in &figures {
        println!("{}", f.line());
    }
    assert_eq!(figures.len(), 3);
    let (full, unchanged, changed) = (&figures[0], &figures[1], &figures[2]);
    assert!(full.records_written >= full.items / 2, "{}", full.line());
    assert_eq!(
        unchanged.records_written,
        0,
        "an unchanged directory writes no fact: {}",
        unchanged.line()
    );
    assert_eq!(unchanged.differences, 0, "{}", unchanged.line());
    assert!(
        changed.differences > 0 && changed.records_written < full.records_written / 10,
        "{}",
        changed.line()
    );
    let burst = burst_scenario(&sandbox, 500, speed).await.expect("burst scenario");
    println!("{}", burst.line());
    assert!(
        burst.calls_per_100_events < burst.baseline_refetch_per_100,
        "{}",
        burst.line()
    );
}
