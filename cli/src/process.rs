//! `dsync reconcile` (enqueue a full-reconcile request) and `dsync process` (the processor behind
//! the local stand-in for the SQS event source, calling the same handler as the Lambda).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use dsync::aws::{load_sdk_config, DynamoClient, SdkBudget, SqsClient};
use dsync::claims::DynamoClaimStore;
use dsync::clock::{Clock, EpochMillis, SystemClock};
use dsync::config::ProcessEnv;
use dsync::poller::{poll_once, PollReport, PollerConfig};
use dsync::processor::config::ProcessorEnv;
use dsync::processor::Processor;
use dsync::queue::{ATTR_EVENT_ID, ATTR_EVENT_TYPE, ATTR_SOURCE};
use dsync::state::DynamoStateStore;
use dsync::workos::{WorkosClient, WorkosConfig};
use serde::Serialize;

use crate::{sdk_err, ProcessArgs};

/// The event type of a reconcile request. The processor treats any `dsync.*` type it does not
/// know as "re-read the whole directory" (`dsync::plan`).
pub const RECONCILE_EVENT: &str = "dsync.reconcile_requested";

/// The `source` message attribute of what the CLI enqueues.
const SOURCE: &str = "cli";

#[derive(Debug, Serialize)]
struct EventBody<'a> {
    object: &'static str,
    id: &'a str,
    event: &'static str,
    data: DirectoryRef<'a>,
    created_at: String,
}

#[derive(Debug, Serialize)]
struct DirectoryRef<'a> {
    object: &'static str,
    id: &'a str,
    directory_id: &'a str,
}

/// The id and body of a reconcile request for `directory` made at `now`.
pub fn reconcile_event(directory: &str, now: EpochMillis) -> Result<(String, String), String> {
    let id = format!("reconcile_{directory}_{}", now.0);
    let body = EventBody {
        object: "event",
        id: &id,
        event: RECONCILE_EVENT,
        data: DirectoryRef {
            object: "directory",
            id: directory,
            directory_id: directory,
        },
        created_at: dsync::event::format_created_at(now),
    };
    let json = serde_json::to_string(&body).map_err(|e| e.to_string())?;
    Ok((id, json))
}

fn string_attr(v: &str) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .map_err(|e| e.to_string())
}

pub async fn request_reconcile(queue_url: &str, directory: &str) -> Result<(), String> {
    let (id, body) = reconcile_event(directory, SystemClock.now())?;
    let sqs = SqsClient::new(&load_sdk_config(SdkBudget::WORKER).await);
    let out = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .message_attributes(ATTR_EVENT_ID, string_attr(&id)?)
        .message_attributes(ATTR_EVENT_TYPE, string_attr(RECONCILE_EVENT)?)
        .message_attributes(ATTR_SOURCE, string_attr(SOURCE)?)
        .send()
        .await
        .map_err(|e| format!("sending to {queue_url}: {}", sdk_err(e)))?;
    println!(
        "enqueued {RECONCILE_EVENT} {id} for directory {directory} (message {})",
        out.message_id.unwrap_or_default()
    );
    Ok(())
}

type LocalProcessor = Processor<WorkosClient, DynamoClaimStore, DynamoStateStore, SystemClock>;

fn build_processor(sdk: &dsync::aws::SdkConfig) -> Result<LocalProcessor, String> {
    let env = ProcessorEnv::from_env(&ProcessEnv).map_err(|e| format!("invalid configuration: {e}"))?;
    let mut workos = WorkosConfig::new(env.api_key.expose());
    workos.base_url = env.api_base_url.clone();
    let api = WorkosClient::new(workos, SystemClock).map_err(|e| format!("invalid configuration: {e}"))?;
    let dynamo = DynamoClient::new(sdk);
    Ok(Processor::new(
        api,
        DynamoClaimStore::new(dynamo.clone(), env.events_table),
        DynamoStateStore::new(dynamo, env.state_table),
        SystemClock,
        env.config,
    ))
}

/// The SDK budget for receives that long-poll `wait_secs`.
pub fn receive_budget(wait_secs: u64) -> SdkBudget {
    let attempt = SdkBudget::WORKER.attempt + Duration::from_secs(wait_secs);
    SdkBudget {
        attempt,
        operation: attempt * SdkBudget::WORKER.max_attempts + Duration::from_secs(1),
        ..SdkBudget::WORKER
    }
}

fn add(total: &mut PollReport, r: PollReport) {
    total.received += r.received;
    total.deleted += r.deleted;
    total.failed += r.failed;
}

/// The line printed per batch.
pub fn batch_line(n: u64, r: &PollReport) -> String {
    format!(
        "batch {n}: received {}, deleted {}, failed {}",
        r.received, r.deleted, r.failed
    )
}

pub async fn run(args: &ProcessArgs) -> Result<(), String> {
    let sdk = load_sdk_config(SdkBudget::WORKER).await;
    let processor = build_processor(&sdk)?;
    // A long poll holds the receive open for --wait-secs: give its attempts room for that.
    let sqs = SqsClient::new(&load_sdk_config(receive_budget(args.wait_secs)).await);
    let config = PollerConfig {
        batch_size: args.batch_size,
        wait: Duration::from_secs(args.wait_secs),
        function_timeout: Duration::from_secs(args.function_timeout_secs),
    };
    let one_shot = args.once || args.until_empty;

    // Ctrl-C: finish the batch in hand (so claims are completed or released), then stop.
    // A second Ctrl-C stops at once.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping after the current batch (Ctrl-C again to stop now)");
                stop.store(true, Ordering::SeqCst);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }

    if !one_shot {
        eprintln!("processing {} (Ctrl-C to stop)", args.queue_url);
    }
    let mut total = PollReport::default();
    let mut batches: u64 = 0;
    let mut backoff = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let report = match poll_once(&sqs, &args.queue_url, &processor, &SystemClock, config).await {
            Ok(r) => r,
            Err(e) if one_shot => return Err(format!("polling {}: {}", args.queue_url, crate::tidy(&e))),
            Err(e) => {
                eprintln!(
                    "polling failed (retrying in {} s): {}",
                    backoff.as_secs(),
                    crate::tidy(&e)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        if report.received == 0 {
            if one_shot {
                break;
            }
            continue;
        }
        batches += 1;
        eprintln!("{}", batch_line(batches, &report));
        add(&mut total, report);
        if args.once {
            break;
        }
    }
    eprintln!(
        "done: {batches} batch(es), received {}, deleted {}, failed {}",
        total.received, total.deleted, total.failed
    );
    if one_shot && total.failed > 0 {
        return Err(format!(
            "{} message(s) failed; they come back after the queue's visibility timeout \
             (and go to the DLQ after maxReceiveCount receives)",
            total.failed
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconcile_request_plans_a_reconcile_of_its_directory() {
        let (id, body) = reconcile_event("directory_01", EpochMillis(1_768_478_400_000)).expect("event");
        assert_eq!(id, "reconcile_directory_01_1768478400000");
        let ev = dsync::plan::parse_event(&body).expect("parses");
        assert_eq!(ev.id, id);
        assert_eq!(ev.event, RECONCILE_EVENT);
        assert_eq!(
            ev.action,
            dsync::plan::Action::Reconcile {
                directory_id: "directory_01".into()
            }
        );
        assert_eq!(ev.created_at, Some(EpochMillis(1_768_478_400_000)));
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["data"]["object"], "directory");
        assert_eq!(v["created_at"], "2026-01-15T12:00:00.000Z");
    }

    #[test]
    fn long_polls_fit_in_an_attempt() {
        let b = receive_budget(20);
        assert!(b.attempt > Duration::from_secs(20));
        assert!(b.operation >= b.attempt * b.max_attempts);
        assert_eq!(receive_budget(0).connect, SdkBudget::WORKER.connect);
    }

    #[test]
    fn batch_lines() {
        let r = PollReport {
            received: 10,
            deleted: 9,
            failed: 1,
        };
        assert_eq!(batch_line(2, &r), "batch 2: received 10, deleted 9, failed 1");
    }
}
