//! The directory as WorkOS reports it, and the port through which it is read.
//!
//! Only what entitlements need is kept: ids, a group's name, a user's state. E-mails and
//! other personal attributes are never read into these types, so they cannot be stored or logged.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::clock::EpochMillis;

/// A user's state as WorkOS reports it (`active`, `inactive`, or something newer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserState {
    Active,
    Inactive,
    /// Deleted in WorkOS (404 on read, or gone from its directory's listing). Set by us.
    Deleted,
    Other(String),
}

impl UserState {
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => UserState::Active,
            "inactive" => UserState::Inactive,
            "deleted" => UserState::Deleted,
            other => UserState::Other(other.to_string()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            UserState::Active => "active",
            UserState::Inactive => "inactive",
            UserState::Deleted => "deleted",
            UserState::Other(s) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirUser {
    pub id: String,
    pub directory_id: String,
    pub state: UserState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGroup {
    pub id: String,
    pub directory_id: String,
    pub name: String,
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
}

impl CallBudget {
    pub fn until(deadline: EpochMillis) -> Self {
        CallBudget {
            deadline,
            calls: AtomicU32::new(0),
        }
    }
    /// Count one HTTP request sent to WorkOS.
    pub fn record_call(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Reads of directory state. Lists return every page. `directory_id` is passed to every call
/// so the client can pace itself per directory (WorkOS allows 4 req/s per directory on
/// `/directory_users`).
pub trait DirectoryApi: Send + Sync + 'static {
    /// `GET /directory_users/{id}`; `None` on 404.
    fn get_user(
        &self,
        directory_id: &str,
        user_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<DirUser>, ApiError>> + Send;

    /// `GET /directory_groups/{id}`; `None` on 404.
    fn get_group(
        &self,
        directory_id: &str,
        group_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Option<DirGroup>, ApiError>> + Send;

    /// `GET /directory_groups?user=` (the user's `groups` field is deprecated).
    fn list_user_groups(
        &self,
        directory_id: &str,
        user_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Vec<DirGroup>, ApiError>> + Send;

    /// `GET /directory_users?group=`.
    fn list_group_users(
        &self,
        directory_id: &str,
        group_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Vec<DirUser>, ApiError>> + Send;

    /// `GET /directory_users?directory=`.
    fn list_directory_users(
        &self,
        directory_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Vec<DirUser>, ApiError>> + Send;

    /// `GET /directory_groups?directory=`.
    fn list_directory_groups(
        &self,
        directory_id: &str,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Vec<DirGroup>, ApiError>> + Send;
}
