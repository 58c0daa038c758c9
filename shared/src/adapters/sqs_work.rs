//! The processor's work queue on SQS: continuations (with a delay, grouped by directory for fair
//! queues) and deferral of received messages (a visibility change); and the [`Outbox`] of the
//! events poller and the scheduler (`SendMessageBatch`).

use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use crate::ports::queue::{Outbox, Outgoing, WorkQueue, WorkQueueError, CONTINUATION};
use crate::queue::ATTR_SOURCE;

/// SQS adapter of [`WorkQueue`].
#[derive(Debug, Clone)]
pub struct SqsWorkQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsWorkQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsWorkQueue {
            client,
            queue_url: queue_url.into(),
        }
    }
}

fn err<E: std::error::Error + 'static, R: std::fmt::Debug>(e: aws_sdk_sqs::error::SdkError<E, R>) -> WorkQueueError {
    WorkQueueError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
}

fn secs(d: Duration, max: u64) -> i32 {
    i32::try_from(d.as_secs().min(max)).unwrap_or(0)
}

impl WorkQueue for SqsWorkQueue {
    async fn continue_later(&self, directory_id: &str, delay: Duration) -> Result<(), WorkQueueError> {
        let body = serde_json::json!({ "object": CONTINUATION, "directory_id": directory_id }).to_string();
        let source = MessageAttributeValue::builder()
            .data_type("String")
            .string_value("continuation")
            .build()
            .map_err(|e| WorkQueueError(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_group_id(directory_id)
            .delay_seconds(secs(delay, 900))
            .message_attributes(ATTR_SOURCE, source)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn defer(&self, receipt_handle: &str, delay: Duration) -> Result<(), WorkQueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs(delay, 43_200))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }
}

/// Most entries in one `SendMessageBatch`.
const BATCH_ENTRIES: usize = 10;
/// Most bytes (bodies and attributes) in one `SendMessageBatch` (SQS's historical 256 KiB limit,
/// kept so the batches also fit queues and emulators that still apply it).
const BATCH_BYTES: usize = 256 * 1024;
/// Attempts at sending the entries SQS could not take (throttling, internal errors).
const BATCH_ATTEMPTS: u32 = 4;

/// About what SQS counts for a message's size: its body and its attributes' names, types and values.
fn size_of(m: &Outgoing) -> usize {
    m.body.len()
        + m.attributes
            .iter()
            .map(|(k, v)| k.len() + "String".len() + v.len())
            .sum::<usize>()
}

/// Split into batches of at most [`BATCH_ENTRIES`] and [`BATCH_BYTES`] (a larger message goes alone).
pub fn batches(messages: &[Outgoing]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in messages.iter().enumerate() {
        let size = size_of(m);
        if i > start && (i - start == BATCH_ENTRIES || bytes + size > BATCH_BYTES) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < messages.len() {
        out.push(start..messages.len());
    }
    out
}

fn entry(i: usize, m: &Outgoing) -> Result<SendMessageBatchRequestEntry, WorkQueueError> {
    let mut e = SendMessageBatchRequestEntry::builder()
        .id(format!("m{i}"))
        .message_body(&m.body)
        .message_group_id(&m.group);
    for (k, v) in &m.attributes {
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .map_err(|e| WorkQueueError(e.to_string()))?;
        e = e.message_attributes(*k, attr);
    }
    e.build().map_err(|e| WorkQueueError(e.to_string()))
}

impl Outbox for SqsWorkQueue {
    async fn send_all(&self, messages: &[Outgoing]) -> Result<(), WorkQueueError> {
        for range in batches(messages) {
            let mut pending: Vec<usize> = range.collect();
            for attempt in 1..=BATCH_ATTEMPTS {
                let entries = pending
                    .iter()
                    .map(|&i| entry(i, &messages[i]))
                    .collect::<Result<Vec<_>, _>>()?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(err)?;
                if out.failed.is_empty() {
                    pending.clear();
                    break;
                }
                if let Some(f) = out.failed.iter().find(|f| f.sender_fault) {
                    // Our mistake (a message SQS refuses): retrying cannot help. The code only, never the body.
                    return Err(WorkQueueError(format!("SQS refused a message: {}", f.code)));
                }
                pending = out
                    .failed
                    .iter()
                    .filter_map(|f| f.id.strip_prefix('m').and_then(|n| n.parse().ok()))
                    .collect();
                if attempt < BATCH_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
            if !pending.is_empty() {
                return Err(WorkQueueError(format!(
                    "SQS did not take {} message(s) after {BATCH_ATTEMPTS} attempts",
                    pending.len()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(size: usize) -> Outgoing {
        Outgoing {
            body: "x".repeat(size),
            group: "g".into(),
            attributes: vec![],
        }
    }

    #[test]
    fn batches_hold_at_most_ten_messages_and_256_kib() {
        let small: Vec<Outgoing> = (0..23).map(|_| msg(10)).collect();
        assert_eq!(batches(&small), vec![0..10, 10..20, 20..23]);
        let big: Vec<Outgoing> = (0..5).map(|_| msg(100 * 1024)).collect();
        assert_eq!(batches(&big), vec![0..2, 2..4, 4..5]);
        assert_eq!(batches(&[msg(300 * 1024), msg(1)]), vec![0..1, 1..2]);
        assert!(batches(&[]).is_empty());
    }
}
