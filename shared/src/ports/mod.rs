//! The ports: small traits the core logic depends on. Their adapters (AWS, WorkOS over HTTP,
//! in memory) live in `crate::adapters`.

pub mod budget;
pub mod claims;
pub mod directory;
pub mod events;
pub mod queue;
pub mod state;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB call failed: {0}")]
    Dynamo(String),
    #[error("stored item is malformed: {0}")]
    Malformed(String),
}
