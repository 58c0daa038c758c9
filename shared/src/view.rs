//! The read side, for the app's feature gate: a user's entitlements and a group's members.
//!
//! Reads come from the state table the processor maintains. `current` says whether the stored
//! entitlements reflect every fact written for the user so far (a recompute may be in flight).

use crate::directory::UserState;
use crate::dynamo::StoreError;
use crate::state::{DynamoStateStore, StateStore, StoredUser};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntitlements {
    pub directory_id: String,
    pub user_id: String,
    pub state: Option<UserState>,
    pub entitlements: Vec<String>,
    /// (group id, group name as last read from WorkOS)
    pub groups: Vec<(String, String)>,
    pub current: bool,
}

impl UserEntitlements {
    /// The gate: does the user have this entitlement?
    pub fn has(&self, entitlement: &str) -> bool {
        self.entitlements.iter().any(|e| e == entitlement)
    }
}

impl From<StoredUser> for UserEntitlements {
    fn from(u: StoredUser) -> Self {
        let current = u.is_current();
        UserEntitlements {
            groups: u.group_ids.into_iter().zip(u.group_names).collect(),
            directory_id: u.directory_id,
            user_id: u.user_id,
            state: u.state,
            entitlements: u.entitlements,
            current,
        }
    }
}

/// Read access for applications. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EntitlementReader {
    store: DynamoStateStore,
}

impl EntitlementReader {
    pub fn new(client: aws_sdk_dynamodb::Client, state_table: impl Into<String>) -> Self {
        EntitlementReader {
            store: DynamoStateStore::new(client, state_table),
        }
    }

    /// A user's entitlements (strongly consistent read). `None` if the user was never seen.
    pub async fn user(&self, directory_id: &str, user_id: &str) -> Result<Option<UserEntitlements>, StoreError> {
        Ok(self.store.user(directory_id, user_id).await?.map(Into::into))
    }

    /// A user's entitlements when only the WorkOS user id is known (through the index).
    pub async fn user_by_id(&self, user_id: &str) -> Result<Option<UserEntitlements>, StoreError> {
        Ok(self.store.find_user(user_id).await?.map(Into::into))
    }

    /// The ids of a group's current members (through the index).
    pub async fn group_members(&self, directory_id: &str, group_id: &str) -> Result<Vec<String>, StoreError> {
        let mut ids = self.store.group_member_ids(directory_id, group_id).await?;
        ids.sort();
        Ok(ids)
    }

    /// Every user of a directory with their entitlements, sorted by user id.
    pub async fn directory(&self, directory_id: &str) -> Result<Vec<UserEntitlements>, StoreError> {
        let mut users: Vec<UserEntitlements> = self
            .store
            .snapshot(directory_id)
            .await?
            .users
            .into_iter()
            .map(Into::into)
            .collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(users)
    }
}
