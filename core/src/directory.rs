//! The directory as WorkOS reports it: the objects the pipeline keeps from WorkOS's answers.
//!
//! Only what entitlements and look-ups need is kept: ids, a group's name, a user's state, and
//! *hashes* of the user's e-mail and IdP id (computed by the adapter while parsing). E-mails and
//! other personal attributes never enter these types, so they cannot be stored or logged.

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
    /// [`crate::facts::email_hash`] of the user's e-mail, if WorkOS gave one.
    pub email_hash: Option<String>,
    /// [`crate::facts::idp_hash`] of the user's IdP id.
    pub idp_hash: Option<String>,
    /// WorkOS's `updated_at`: the version of this object (membership changes do not move it).
    pub updated_at: Option<EpochMillis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGroup {
    pub id: String,
    pub directory_id: String,
    pub name: String,
    /// WorkOS's `updated_at`: the version of this object.
    pub updated_at: Option<EpochMillis>,
}

/// A directory as `GET /directories/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirInfo {
    pub id: String,
    pub organization_id: Option<String>,
    pub state: String,
}

/// One page of a list and the cursor of the next (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub after: Option<String>,
}
