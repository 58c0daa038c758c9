//! `dsync reconcile` (enqueue a full-reconcile request) and `dsync process` (the processor behind
//! the local stand-in for the SQS event source, calling the same handler as the Lambda).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use dsync::adapters::dynamo_budget::DynamoBudget;
use dsync::adapters::dynamo_claims::DynamoClaimStore;
use dsync::adapters::dynamo_state::DynamoStateStore;
use dsync::adapters::sqs_work::SqsWorkQueue;
use dsync::adapters::workos::{WorkosClient, WorkosConfig};
use dsync::aws::{load_sdk_config, DynamoClient, SdkBudget, SqsClient};
use dsync::clock::{Clock, SystemClock};
use dsync::config::ProcessEnv;
use dsync::poller::{poll_once, PollReport, PollerConfig};
use dsync::processor::config::ProcessorEnv;
use dsync::processor::Processor;
use dsync::queue::ATTR_SOURCE;
use dsync::secrets::CachedSecret;

use crate::{sdk_err, ProcessArgs};

/// The `source` message attribute of a reconcile request.
const SOURCE: &str = "request";

fn string_attr(v: &str) -> Result<MessageAttributeValue, String> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .map_err(|e| e.to_string())
}

/// Ask the processor for a full reconcile of a directory (as the scheduler does).
pub async fn request_reconcile(queue_url: &str, directory: &str) -> Result<(), String> {
    let body = dsync::plan::request_body(directory, SystemClock.now());
    let sqs = SqsClient::new(&load_sdk_config(SdkBudget::WORKER).await);
    let out = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .message_group_id(directory)
        .message_attributes(ATTR_SOURCE, string_attr(SOURCE)?)
        .send()
        .await
        .map_err(|e| format!("sending to {queue_url}: {}", sdk_err(e)))?;
    println!(
        "requested a reconcile of directory {directory} (message {})",
        out.message_id.unwrap_or_default()
    );
    Ok(())
}

type LocalProcessor = Processor<WorkosClient, DynamoClaimStore, DynamoStateStore, SqsWorkQueue, SystemClock>;

async fn build_processor(sdk: &dsync::aws::SdkConfig, queue_url: &str) -> Result<LocalProcessor, String> {
    let env = ProcessorEnv::from_env(&ProcessEnv).map_err(|e| format!("invalid configuration: {e}"))?;
    let key = CachedSecret::from_source(&env.api_key, sdk, SystemClock)
        .await
        .map_err(|e| format!("cannot read the WorkOS API key: {e}"))?;
    let workos = WorkosConfig {
        base_url: env.api_base_url.clone(),
        ..WorkosConfig::default()
    };
    let dynamo = DynamoClient::new(sdk);
    let budget = DynamoBudget::new(dynamo.clone(), env.state_table.clone(), env.key_rate_per_minute);
    let api = WorkosClient::with_key(workos, SystemClock, budget, Arc::new(key))
        .map_err(|e| format!("invalid configuration: {e}"))?;
    Ok(Processor::new(
        api,
        DynamoClaimStore::new(dynamo.clone(), env.events_table),
        DynamoStateStore::new(dynamo, env.state_table),
        SqsWorkQueue::new(SqsClient::new(sdk), queue_url),
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
        "batch {n}: received {}, deleted {}, put back {}",
        r.received, r.deleted, r.failed
    )
}

pub async fn run(args: &ProcessArgs) -> Result<(), String> {
    let sdk = load_sdk_config(SdkBudget::WORKER).await;
    let processor = build_processor(&sdk, &args.queue_url).await?;
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
            // Deferred events and continuations are on the queue but not visible yet: "until
            // empty" waits for them (the work is not done while they are there).
            let waiting = if args.until_empty {
                dsync::poller::depth(&sqs, &args.queue_url)
                    .await
                    .map_err(|e| format!("reading {}: {}", args.queue_url, crate::tidy(&e)))?
            } else {
                0
            };
            if one_shot && waiting == 0 {
                break;
            }
            if waiting > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
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
    // Messages not deleted were put back: deferred until a read reflects them, or failed for a
    // passing reason. They come back (and go to the DLQ after maxReceiveCount receives).
    eprintln!(
        "done: {batches} batch(es), received {}, deleted {}, put back {}",
        total.received, total.deleted, total.failed
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(batch_line(2, &r), "batch 2: received 10, deleted 9, put back 1");
    }
}
