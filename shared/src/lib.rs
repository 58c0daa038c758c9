//! Core of the WorkOS directory-sync entitlement pipeline: plain logic behind small ports,
//! with the AWS and HTTP adapters beside them.

pub mod aws;
pub mod clock;
pub mod config;
pub mod event;
pub mod queue;
pub mod receiver;
pub mod signature;
