//! A local stand-in for Lambda's SQS event source: receive a batch, hand it to the same handler
//! the Lambda runs, delete what succeeded, leave reported failures on the queue. They come back
//! after the visibility timeout, and the queue's redrive policy moves them to the DLQ after
//! `maxReceiveCount` receives, exactly as with the real event source mapping.

use std::collections::HashSet;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

use crate::clock::Clock;
use crate::directory::DirectoryApi;
use crate::ports::claims::ClaimStore;
use crate::ports::queue::WorkQueue;
use crate::ports::state::StateStore;
use crate::processor::{lambda, Processor};

#[derive(Debug, Clone, Copy)]
pub struct PollerConfig {
    /// 1 to 10 messages per batch.
    pub batch_size: i32,
    /// Long-poll wait per receive.
    pub wait: Duration,
    /// The function timeout the handler is given (its deadline).
    pub function_timeout: Duration,
}

impl Default for PollerConfig {
    fn default() -> Self {
        PollerConfig {
            batch_size: 10,
            wait: Duration::from_secs(1),
            function_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    pub received: usize,
    pub deleted: usize,
    pub failed: usize,
}

fn sqs_err<E: std::error::Error + 'static, R: std::fmt::Debug>(e: aws_sdk_sqs::error::SdkError<E, R>) -> String {
    aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()
}

/// Convert a received message into the event source's record shape.
pub fn to_lambda_message(m: &aws_sdk_sqs::types::Message, queue_arn: Option<&str>) -> SqsMessage {
    let mut out = SqsMessage::default();
    out.message_id = m.message_id.clone();
    out.receipt_handle = m.receipt_handle.clone();
    out.body = m.body.clone();
    out.md5_of_body = m.md5_of_body.clone();
    out.event_source = Some("aws:sqs".into());
    out.event_source_arn = queue_arn.map(str::to_string);
    if let Some(attrs) = &m.attributes {
        for (k, v) in attrs {
            out.attributes.insert(k.as_str().to_string(), v.clone());
        }
    }
    if let Some(attrs) = &m.message_attributes {
        for (k, v) in attrs {
            let mut a = SqsMessageAttribute::default();
            a.string_value = v.string_value.clone();
            a.data_type = Some(v.data_type.clone());
            out.message_attributes.insert(k.clone(), a);
        }
    }
    out
}

/// Receive one batch and run it through the handler. Returns what happened.
pub async fn poll_once<A, C, S, Q, K>(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    processor: &Processor<A, C, S, Q, K>,
    clock: &impl Clock,
    config: PollerConfig,
) -> Result<PollReport, String>
where
    A: DirectoryApi,
    C: ClaimStore,
    S: StateStore,
    Q: WorkQueue,
    K: Clock + Clone,
{
    let wait = i32::try_from(config.wait.as_secs()).unwrap_or(20).clamp(0, 20);
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(config.batch_size.clamp(1, 10))
        .wait_time_seconds(wait)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(sqs_err)?;
    let messages = out.messages.unwrap_or_default();
    if messages.is_empty() {
        return Ok(PollReport::default());
    }
    let mut event = SqsEvent::default();
    event.records = messages.iter().map(|m| to_lambda_message(m, None)).collect();
    let deadline = clock.now().saturating_add(config.function_timeout);
    let response = lambda::handle(processor, event, deadline).await;
    let failed: HashSet<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    // An empty identifier means "the whole batch failed", as Lambda reads it.
    let whole_batch_failed = failed.contains("");
    let mut entries = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let id = m.message_id.as_deref().unwrap_or("");
        if whole_batch_failed || failed.contains(id) {
            continue;
        }
        if let Some(handle) = &m.receipt_handle {
            entries.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .receipt_handle(handle)
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    let deleted = entries.len();
    if !entries.is_empty() {
        sqs.delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sqs_err)?;
    }
    Ok(PollReport {
        received: messages.len(),
        deleted,
        failed: messages.len() - deleted,
    })
}

/// Messages on the queue: visible, in flight, delayed (SQS's approximate counts).
pub async fn depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<u64, String> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(A::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(sqs_err)?;
    let attrs = out.attributes.unwrap_or_default();
    Ok([
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
        A::ApproximateNumberOfMessagesDelayed,
    ]
    .iter()
    .filter_map(|k| attrs.get(k).and_then(|v| v.parse::<u64>().ok()))
    .sum())
}

/// Poll until the queue has been empty for one receive (or `max_batches` ran).
pub async fn drain<A, C, S, Q, K>(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    processor: &Processor<A, C, S, Q, K>,
    clock: &impl Clock,
    config: PollerConfig,
    max_batches: usize,
) -> Result<PollReport, String>
where
    A: DirectoryApi,
    C: ClaimStore,
    S: StateStore,
    Q: WorkQueue,
    K: Clock + Clone,
{
    let mut total = PollReport::default();
    for _ in 0..max_batches {
        let r = poll_once(sqs, queue_url, processor, clock, config).await?;
        if r.received == 0 {
            break;
        }
        total.received += r.received;
        total.deleted += r.deleted;
        total.failed += r.failed;
    }
    Ok(total)
}
