//! Core of the WorkOS directory-sync entitlement pipeline: plain logic behind small ports, with
//! the adapters (AWS, WorkOS over HTTP, in memory) in one folder beside them.
//!
//! - core logic: [`signature`], [`event`], [`plan`], [`rules`], [`model`], [`engine`],
//!   [`processor`], [`receiver`], [`view`], [`events_poller`] (the Events API poller),
//!   [`scheduler`] (directory discovery, scheduled reconciles, the job watchdog)
//! - ports: [`ports`] (directory API and listing, Events API, claim store, state store with the
//!   stream cursor, work queue and outbox, rate budget) and [`clock`]
//! - adapters: [`adapters`] (`dynamo_*`, `workos`, `memory`) and [`queue`] (the receiver's SQS)
//! - [`conformance`]: the suite every store adapter must pass

pub use dsync_core::{clock, event, plan, rules, signature};

pub mod adapters;
pub mod aws;
pub mod config;
pub mod conformance;
pub mod engine;
pub mod events_poller;
pub mod model;
pub mod poller;
pub mod ports;
pub mod processor;
pub mod queue;
pub mod receiver;
pub mod scheduler;
pub mod schema;
pub mod secrets;
pub mod view;
pub mod worker;

/// The directory API port and its types, under their historical path.
pub use ports::directory;
