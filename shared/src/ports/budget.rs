//! The shared WorkOS request budget: WorkOS allows a number of requests per API key per minute,
//! across every process that uses the key, so every process takes each request from one budget.

use std::future::Future;

use crate::clock::EpochMillis;
use crate::ports::StoreError;

/// The per-key request budget port.
pub trait RateBudget: Send + Sync + 'static {
    /// Take one request from the budget at `now`: `None` if granted, or the instant from which to
    /// try again.
    fn take(&self, now: EpochMillis) -> impl Future<Output = Result<Option<EpochMillis>, StoreError>> + Send;
}

/// No shared budget (tests and single-process tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

impl RateBudget for Unlimited {
    async fn take(&self, _now: EpochMillis) -> Result<Option<EpochMillis>, StoreError> {
        Ok(None)
    }
}
