//! `scale`: the scale benchmark of issue 9. See `bench/scale.sh` and BENCHMARKS.md.
//!
//! ```text
//! scale reconcile [--users 100000 --groups 1000 --memberships 300000 --biggest 50000]
//! scale burst     [--users 10000]
//! scale moto      [--users 10000]          (needs moto: scripts/emu.sh start; eval "$(scripts/emu.sh env)")
//! common: --speed 10 (time runs this many times faster, the rate limit scaled alike) --workers 8
//!         --sandbox PATH (default: target/release/workos-sandbox)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use integration_tests::bench::{burst_scenario, moto_scenario, reconcile_scenario, Speed};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    // RUST_LOG=info shows the processor's chunks and jobs (stderr); off by default.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().cloned().unwrap_or_else(|| "reconcile".into());
    let speed = Speed {
        factor: u32::try_from(arg(&args, "--speed", 10)).unwrap_or(10),
        workers: arg(&args, "--workers", 8),
    };
    let sandbox = args
        .iter()
        .position(|a| a == "--sandbox")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("target/release/workos-sandbox"), PathBuf::from);
    println!(
        "scale {scenario}: speed x{} (WorkOS allows {} /directory_users requests/s per directory here), {} workers",
        speed.factor,
        speed.rate(),
        speed.workers
    );
    let result = match scenario.as_str() {
        "reconcile" => reconcile_scenario(
            &sandbox,
            arg(&args, "--users", 100_000),
            arg(&args, "--groups", 1000),
            arg(&args, "--memberships", 300_000),
            arg(&args, "--biggest", 50_000),
            speed,
        )
        .await
        .map(|figures| figures.iter().map(|f| f.line()).collect::<Vec<_>>()),
        "burst" => burst_scenario(&sandbox, arg(&args, "--users", 10_000), speed)
            .await
            .map(|f| vec![f.line()]),
        "moto" => moto_scenario(&sandbox, arg(&args, "--users", 10_000), speed)
            .await
            .map(|f| vec![f.line()]),
        other => Err(format!("unknown scenario {other:?} (reconcile, burst, moto)")),
    };
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scale: {e}");
            ExitCode::FAILURE
        }
    }
}
