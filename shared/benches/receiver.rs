//! Signature verification and the whole receiver core (verify, parse, enqueue to memory).
//! Run: cargo bench -p dsync --bench receiver

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dsync::clock::{EpochMillis, ManualClock};
use dsync::queue::MemoryQueue;
use dsync::receiver::{Inbound, Receiver};
use dsync::signature::{signature_header, Verifier, DEFAULT_TOLERANCE};
use http::{HeaderMap, Method};

const T0: EpochMillis = EpochMillis(1_700_000_000_000);

fn body_of(len: usize) -> Vec<u8> {
    let head = r#"{"object":"event","id":"event_01BENCH","event":"dsync.user.updated","data":{"pad":""#;
    let tail = r#""},"created_at":"2026-11-25T10:00:00.000Z"}"#;
    let pad = len.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

fn verification(c: &mut Criterion) {
    let verifier = Verifier::new(["whsec_bench"], DEFAULT_TOLERANCE).expect("secret");
    let rotating = Verifier::from_list("whsec_old,whsec_bench", DEFAULT_TOLERANCE).expect("secrets");
    let mut g = c.benchmark_group("verify");
    for len in [1024usize, 100 * 1024] {
        let body = body_of(len);
        let header = signature_header("whsec_bench", T0, &body);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("one_secret", len), &body, |b, body| {
            b.iter(|| verifier.verify(Some(black_box(&header)), black_box(body), T0))
        });
        g.bench_with_input(BenchmarkId::new("second_of_two_secrets", len), &body, |b, body| {
            b.iter(|| rotating.verify(Some(black_box(&header)), black_box(body), T0))
        });
    }
    g.finish();
}

fn handler(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let verifier = Verifier::new(["whsec_bench"], DEFAULT_TOLERANCE).expect("secret");
    let receiver = Receiver::new(verifier, MemoryQueue::default(), ManualClock::at(T0));
    let mut g = c.benchmark_group("handler");
    for len in [1024usize, 100 * 1024] {
        let body = body_of(len);
        let mut headers = HeaderMap::new();
        headers.insert(
            "workos-signature",
            signature_header("whsec_bench", T0, &body).parse().expect("header"),
        );
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("verify_parse_enqueue", len), &body, |b, body| {
            b.iter(|| {
                let inbound = Inbound {
                    method: &Method::POST,
                    path: "/webhooks/workos",
                    headers: &headers,
                    body,
                    source_ip: None,
                };
                let out = rt.block_on(receiver.decide(inbound));
                receiver.queue().clear();
                out
            })
        });
    }
    g.finish();
}

criterion_group!(benches, verification, handler);
criterion_main!(benches);
