//! The processor's side of the queue: continuing a directory's work later, and putting back an
//! event whose effects are not applied yet so it comes back when they should be.

use std::future::Future;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue call failed: {0}")]
pub struct WorkQueueError(pub String);

/// The work queue port.
pub trait WorkQueue: Send + Sync + 'static {
    /// Queue a continuation for a directory, delivered after `delay` (at most 15 minutes).
    fn continue_later(
        &self,
        directory_id: &str,
        delay: Duration,
    ) -> impl Future<Output = Result<(), WorkQueueError>> + Send;
    /// Make a received message visible again after `delay` (at most 12 hours).
    fn defer(&self, receipt_handle: &str, delay: Duration) -> impl Future<Output = Result<(), WorkQueueError>> + Send;
}

/// A message for the events queue from one of our own senders (the events poller, the
/// scheduler): its body, its message group (the directory id: fair queues) and string attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub body: String,
    pub group: String,
    pub attributes: Vec<(&'static str, String)>,
}

/// Sending messages to the events queue.
pub trait Outbox: Send + Sync + 'static {
    /// Send every message, in batches. `Ok` only once the queue accepted all of them; after an
    /// error some may have been sent (a retry sends them again: the processor dedups by event id).
    fn send_all(&self, messages: &[Outgoing]) -> impl Future<Output = Result<(), WorkQueueError>> + Send;
}

pub use dsync_core::plan::{CONTINUATION, REQUEST};
