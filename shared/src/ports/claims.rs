//! The claim store port: crash-safe dedup of WorkOS events, a claim per event id, taken with one
//! conditional put. Adapters: `adapters::dynamo_claims`, `adapters::memory`.
//!
//! Modelled on Powertools' idempotency record: `IN_PROGRESS` with a lease that ends at the Lambda
//! invocation's deadline (epoch **milliseconds**), `COMPLETED` with an outcome, and an `expires_at`
//! (epoch **seconds**, also the table's TTL attribute) at least as long as the Events API can replay
//! an event. TTL deletion is never trusted: the condition compares `expires_at` itself.

use std::future::Future;

use crate::clock::{EpochMillis, EpochSeconds};
use crate::ports::StoreError;

pub const IN_PROGRESS: &str = "IN_PROGRESS";
pub const COMPLETED: &str = "COMPLETED";
pub const INVALID: &str = "INVALID";

/// A claim attempt.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// `webhook` or `events-api`.
    pub source: &'a str,
    /// Identifies this attempt, so only it can complete or release its own claim.
    pub token: &'a str,
    pub now: EpochMillis,
    pub lease_until: EpochMillis,
    pub expires_at: EpochSeconds,
    /// When the queue first received the message, if known.
    pub received_at: Option<EpochMillis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimResult {
    /// Ours to process.
    Acquired,
    /// Processed before (or recorded as invalid): acknowledge.
    AlreadyDone { status: String },
    /// Another run holds a live lease: try again later.
    HeldElsewhere { lease_until: EpochMillis },
}

/// How an event was finished.
#[derive(Debug, Clone)]
pub struct Completion<'a> {
    pub event_id: &'a str,
    pub token: &'a str,
    /// e.g. `applied`, `covered`, `ignored`, `directory_deleted`.
    pub outcome: &'a str,
    /// The read whose writes applied the event (a run id or a chunk id), if any. Several events
    /// share one read: its WorkOS calls are counted once, on the read (run record, chunk log),
    /// and here only as `workos_calls` on the first event it completed.
    pub applied_by: Option<&'a str>,
    pub workos_calls: u32,
    pub done_at: EpochMillis,
    pub expires_at: EpochSeconds,
}

/// The claim store port.
pub trait ClaimStore: Send + Sync + 'static {
    fn claim(&self, req: &ClaimRequest<'_>) -> impl Future<Output = Result<ClaimResult, StoreError>> + Send;
    /// Mark our claim COMPLETED. `Ok(false)` if the claim was no longer ours (our lease ran out
    /// and another run took over).
    fn complete(&self, c: &Completion<'_>) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Delete our claim so a retry can run at once. No-op if it is not ours any more.
    fn release(&self, event_id: &str, token: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Record a message that can never be processed, keyed so it is recorded once.
    fn record_invalid(
        &self,
        key: &str,
        reason: &str,
        now: EpochMillis,
        expires_at: EpochSeconds,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
