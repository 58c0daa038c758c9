//! `dsync load`: send many signed events to a receiver and report latency and throughput.
//! For benchmarks on loopback or a test stage: bounded in count, never unbounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dsync::clock::{Clock, SystemClock};
use dsync::signature::signature_header;

/// The most requests one run may send.
pub const MAX_COUNT: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub sent: usize,
    pub ok: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The latency at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub async fn run(url: &str, secret: &str, count: usize, concurrency: usize) -> Result<Summary, String> {
    if count == 0 || count > MAX_COUNT {
        return Err(format!("--count must be 1 to {MAX_COUNT}"));
    }
    let concurrency = concurrency.clamp(1, 256);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run_id = SystemClock.now().0;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, secret) = (client.clone(), next.clone(), url.to_string(), secret.to_string());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return (samples, failed);
                }
                let now = SystemClock.now();
                let body = serde_json::json!({
                    "object": "event",
                    "id": format!("event_load_{run_id}_{i}"),
                    "event": "dsync.user.updated",
                    "data": {"object": "directory_user", "id": format!("directory_user_load_{i}"), "directory_id": "directory_load"},
                    "created_at": dsync::event::format_created_at(now),
                })
                .to_string();
                let t = Instant::now();
                let result = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("WorkOS-Signature", signature_header(&secret, now, body.as_bytes()))
                    .body(body)
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status().is_success() => samples.push(t.elapsed()),
                    _ => failed += 1,
                }
            }
        }));
    }
    let mut samples = Vec::with_capacity(count);
    let mut failed = 0;
    for w in workers {
        let (s, f) = w.await.map_err(|e| e.to_string())?;
        samples.extend(s);
        failed += f;
    }
    let elapsed = started.elapsed();
    samples.sort();
    Ok(Summary {
        sent: count,
        ok: samples.len(),
        failed,
        elapsed,
        p50: quantile(&samples, 0.50),
        p95: quantile(&samples, 0.95),
        p99: quantile(&samples, 0.99),
        max: samples.last().copied().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&s, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
