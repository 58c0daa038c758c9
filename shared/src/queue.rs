//! The queue port (where verified webhooks go) and its SQS adapter.

use std::future::Future;
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::types::MessageAttributeValue;

use crate::clock::EpochMillis;

/// A verified webhook, ready to enqueue. `body` is the raw request body, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub body: String,
    pub event_id: String,
    pub event_type: String,
    pub signed_at: EpochMillis,
}

/// Message attribute names (read by the processor and by operators in the console).
pub const ATTR_EVENT_ID: &str = "workos_event_id";
pub const ATTR_EVENT_TYPE: &str = "workos_event_type";
pub const ATTR_SIGNED_AT: &str = "workos_signed_at_ms";
pub const ATTR_SOURCE: &str = "source";

#[derive(Debug, thiserror::Error)]
#[error("queue send failed: {0}")]
pub struct QueueError(pub String);

/// The port the receiver depends on.
pub trait EventQueue: Send + Sync + 'static {
    /// Enqueue and return the queue's message id once the queue has accepted it.
    fn enqueue(&self, event: &QueuedEvent) -> impl Future<Output = Result<String, QueueError>> + Send;
}

/// SQS adapter. Timeouts and retries come from the `SdkConfig` the client was built with.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
        }
    }
}

fn string_attr(value: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| QueueError(e.to_string()))
}

impl EventQueue for SqsQueue {
    async fn enqueue(&self, event: &QueuedEvent) -> Result<String, QueueError> {
        let signed_at = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(event.signed_at.0.to_string())
            .build()
            .map_err(|e| QueueError(e.to_string()))?;
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&event.body)
            .message_attributes(ATTR_EVENT_ID, string_attr(&event.event_id)?)
            .message_attributes(ATTR_EVENT_TYPE, string_attr(&event.event_type)?)
            .message_attributes(ATTR_SIGNED_AT, signed_at)
            .message_attributes(ATTR_SOURCE, string_attr("webhook")?)
            .send()
            .await
            .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
        Ok(out.message_id.unwrap_or_default())
    }
}

/// An in-memory queue for unit tests and benchmarks; can be told to fail.
#[derive(Debug, Clone, Default)]
pub struct MemoryQueue {
    inner: Arc<Mutex<MemoryQueueState>>,
}

#[derive(Debug, Default)]
struct MemoryQueueState {
    sent: Vec<QueuedEvent>,
    failing: bool,
}

impl MemoryQueue {
    pub fn sent(&self) -> Vec<QueuedEvent> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).sent.clone()
    }
    pub fn set_failing(&self, failing: bool) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).failing = failing;
    }
    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).sent.clear();
    }
}

impl EventQueue for MemoryQueue {
    async fn enqueue(&self, event: &QueuedEvent) -> Result<String, QueueError> {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.failing {
            return Err(QueueError("memory queue told to fail".into()));
        }
        s.sent.push(event.clone());
        Ok(format!("mem-{}", s.sent.len()))
    }
}
