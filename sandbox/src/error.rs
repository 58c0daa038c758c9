//! Errors from the sandbox's mutation API.

/// Why a mutation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// No such directory, user or group (or it was deleted); the string names it.
    #[error("{0} not found")]
    NotFound(String),
    /// The request contradicts the current state (e.g. user and group in different directories).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A malformed argument.
    #[error("invalid: {0}")]
    Invalid(String),
}
