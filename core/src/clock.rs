//! Time as the rest of the crate sees it: an injectable clock and unit-typed instants.
//!
//! Epoch seconds and epoch milliseconds are different types on purpose. Powertools shipped
//! both a seconds/milliseconds mix-up and a lease that was never written when the remaining
//! time was zero; with distinct types the first cannot compile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EpochMillis(pub u64);

/// Whole seconds since the Unix epoch (the unit DynamoDB TTL wants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EpochSeconds(pub u64);

impl EpochMillis {
    pub fn to_seconds(self) -> EpochSeconds {
        EpochSeconds(self.0 / 1000)
    }
    pub fn saturating_add(self, d: Duration) -> Self {
        EpochMillis(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
    pub fn saturating_sub(self, d: Duration) -> Self {
        EpochMillis(self.0.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }
    /// Absolute distance between two instants.
    pub fn abs_diff(self, other: EpochMillis) -> Duration {
        Duration::from_millis(self.0.abs_diff(other.0))
    }
    /// Time left until `self`, zero if it has passed.
    pub fn remaining_from(self, now: EpochMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(now.0))
    }
}

impl EpochSeconds {
    pub fn saturating_add(self, d: Duration) -> Self {
        EpochSeconds(self.0.saturating_add(d.as_secs()))
    }
}

impl From<SystemTime> for EpochMillis {
    fn from(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        EpochMillis(u64::try_from(ms).unwrap_or(u64::MAX))
    }
}

/// The clock port.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> EpochMillis;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EpochMillis {
        SystemTime::now().into()
    }
}

/// A clock tests can set and move.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn at(now: EpochMillis) -> Self {
        ManualClock(Arc::new(AtomicU64::new(now.0)))
    }
    pub fn set(&self, now: EpochMillis) {
        self.0.store(now.0, Ordering::SeqCst);
    }
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> EpochMillis {
        EpochMillis(self.0.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> EpochMillis {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_to_seconds_truncates() {
        assert_eq!(EpochMillis(1_700_000_000_999).to_seconds(), EpochSeconds(1_700_000_000));
    }

    #[test]
    fn remaining_is_zero_once_passed() {
        assert_eq!(EpochMillis(10).remaining_from(EpochMillis(20)), Duration::ZERO);
        assert_eq!(
            EpochMillis(30).remaining_from(EpochMillis(20)),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn manual_clock_moves() {
        let c = ManualClock::at(EpochMillis(5));
        c.advance(Duration::from_secs(1));
        assert_eq!(c.now(), EpochMillis(1005));
    }
}
