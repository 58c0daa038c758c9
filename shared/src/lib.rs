//! Core of the WorkOS directory-sync entitlement pipeline: plain logic behind small ports,
//! with the AWS and HTTP adapters beside them.

pub mod aws;
pub mod claims;
pub mod clock;
pub mod config;
pub mod directory;
pub mod dynamo;
pub mod event;
pub mod plan;
pub mod poller;
pub mod processor;
pub mod queue;
pub mod receiver;
pub mod rules;
pub mod schema;
pub mod secrets;
pub mod signature;
pub mod state;
pub mod view;
pub mod workos;
