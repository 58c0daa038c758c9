//! The pure core of the pipeline: plain logic with no I/O, no AWS and no HTTP client, so every
//! rule can be read, tested and fuzzed on its own.
//!
//! - [`signature`]: the `WorkOS-Signature` header
//! - [`event`], [`plan`]: the event envelope, and what an event asks to be re-read
//! - [`directory`]: the WorkOS objects the pipeline keeps
//! - [`rules`]: entitlement rules
//! - [`floors`]: what an accepted event asserts, as a lower bound a read must reach
//! - [`facts`]: the stored records, how a read changes them, and the derivation of entitlements
//! - [`gate`]: the decision, a pure function of one consistent snapshot
//! - [`clock`]: time types and the clock port

pub mod clock;
pub mod directory;
pub mod event;
pub mod facts;
pub mod floors;
pub mod gate;
pub mod plan;
pub mod rules;
pub mod signature;
