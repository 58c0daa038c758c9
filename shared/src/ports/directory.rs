//! The directory as WorkOS reports it, and the port through which it is read.
//!
//! Only what entitlements and look-ups need is kept: ids, a group's name, a user's state, and
//! *hashes* of the user's e-mail and IdP id (computed by the adapter while parsing). E-mails and
//! other personal attributes never enter these types, so they cannot be stored or logged.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::clock::EpochMillis;

pub use dsync_core::directory::*;

/// Which users to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing<'a> {
    /// Every user of the directory.
    Directory,
    /// The members of one group.
    Group(&'a str),
}

/// Why a read failed. Every variant is worth a retry later except `Auth` and `Client`,
/// which need an operator (a bad key, a bad request); they are still reported, never hidden.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("rate limited (retry after {retry_after:?})")]
    RateLimited { retry_after: Option<Duration> },
    #[error("WorkOS answered {status}")]
    Server { status: u16, request_id: Option<String> },
    #[error("request timed out")]
    Timeout,
    #[error("transport error: {0}")]
    Transport(String),
    #[error("WorkOS refused the API key ({status})")]
    Auth { status: u16 },
    #[error("WorkOS rejected the request ({status}): {message}")]
    Client { status: u16, message: String },
    #[error("unexpected response: {0}")]
    BadResponse(String),
    #[error("no time left before the invocation deadline")]
    DeadlineExceeded,
}

/// Per-operation limits and accounting: the deadline no retry may pass, and the calls made.
#[derive(Debug)]
pub struct CallBudget {
    pub deadline: EpochMillis,
    calls: AtomicU32,
    throttled: AtomicU32,
}

impl CallBudget {
    pub fn until(deadline: EpochMillis) -> Self {
        CallBudget {
            deadline,
            calls: AtomicU32::new(0),
            throttled: AtomicU32::new(0),
        }
    }
    /// Count one HTTP request sent to WorkOS.
    pub fn record_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
    /// Count one 429 received.
    pub fn record_throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }
    pub fn throttled(&self) -> u32 {
        self.throttled.load(Ordering::Relaxed)
    }
}

/// Reads of directory state. `directory_id` is passed to every call so the client can pace itself
/// per directory (WorkOS allows 4 req/s per directory on `/directory_users`). A 404 is an answer
/// (`None`: the object is gone), never an error.
pub trait DirectoryApi: Send + Sync + 'static {
    /// `GET /directories/{id}`.
    fn get_directory(
        &self,
        directory_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<DirInfo>, ApiError>> + Send;

    /// `GET /directory_users/{id}`.
    fn get_user(
        &self,
        directory_id: &str,
        user_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<DirUser>, ApiError>> + Send;

    /// `GET /directory_groups/{id}`.
    fn get_group(
        &self,
        directory_id: &str,
        group_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<DirGroup>, ApiError>> + Send;

    /// Every page of `GET /directory_groups?user=` (a user's groups are few).
    fn user_groups(
        &self,
        directory_id: &str,
        user_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<Vec<DirGroup>>, ApiError>> + Send;

    /// One page of `GET /directory_users?directory=` or `?group=`; `None` when the group is gone.
    fn users_page(
        &self,
        directory_id: &str,
        listing: Listing<'_>,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<Page<DirUser>>, ApiError>> + Send;

    /// One page of `GET /directory_groups?directory=`.
    fn groups_page(
        &self,
        directory_id: &str,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<Page<DirGroup>>, ApiError>> + Send;

    /// Where `/directory_users` pacing for this directory stands (`None`: no pacing here).
    /// Passed from one lease holder to the next, so a hand-over never bursts past the limit.
    fn pace_next(&self, _directory_id: &str) -> Option<EpochMillis> {
        None
    }

    /// Do not send a paced request for this directory before `at`.
    fn pace_from(&self, _directory_id: &str, _at: EpochMillis) {}
}

/// The account's directories (`GET /directories`), for the scheduler and the events poller.
pub trait DirectoryList: Send + Sync + 'static {
    /// One page of `GET /directories`, in id order; `Page::after` is `None` on the last page.
    fn directories_page(
        &self,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Page<DirInfo>, ApiError>> + Send;
}

impl<T: DirectoryList> DirectoryList for std::sync::Arc<T> {
    fn directories_page(
        &self,
        after: Option<&str>,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Page<DirInfo>, ApiError>> + Send {
        (**self).directories_page(after, budget)
    }
}

/// A directory in this state is synced by WorkOS and worth reconciling (`linked` in the REST
/// API, `active` in events).
pub fn is_active_state(state: &str) -> bool {
    matches!(state, "linked" | "active")
}

impl<T: DirectoryApi> DirectoryApi for std::sync::Arc<T> {
    fn get_directory(&self, d: &str, b: &CallBudget) -> impl Future<Output = Result<Option<DirInfo>, ApiError>> + Send {
        (**self).get_directory(d, b)
    }
    fn get_user(
        &self,
        d: &str,
        u: &str,
        b: &CallBudget,
    ) -> impl Future<Output = Result<Option<DirUser>, ApiError>> + Send {
        (**self).get_user(d, u, b)
    }
    fn get_group(
        &self,
        d: &str,
        g: &str,
        b: &CallBudget,
    ) -> impl Future<Output = Result<Option<DirGroup>, ApiError>> + Send {
        (**self).get_group(d, g, b)
    }
    fn user_groups(
        &self,
        d: &str,
        u: &str,
        b: &CallBudget,
    ) -> impl Future<Output = Result<Option<Vec<DirGroup>>, ApiError>> + Send {
        (**self).user_groups(d, u, b)
    }
    fn users_page(
        &self,
        d: &str,
        l: Listing<'_>,
        a: Option<&str>,
        b: &CallBudget,
    ) -> impl Future<Output = Result<Option<Page<DirUser>>, ApiError>> + Send {
        (**self).users_page(d, l, a, b)
    }
    fn groups_page(
        &self,
        d: &str,
        a: Option<&str>,
        b: &CallBudget,
    ) -> impl Future<Output = Result<Option<Page<DirGroup>>, ApiError>> + Send {
        (**self).groups_page(d, a, b)
    }
    fn pace_next(&self, d: &str) -> Option<EpochMillis> {
        (**self).pace_next(d)
    }
    fn pace_from(&self, d: &str, at: EpochMillis) {
        (**self).pace_from(d, at)
    }
}
