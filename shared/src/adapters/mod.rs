//! Adapters of the ports: AWS (DynamoDB, SQS), WorkOS over HTTP, and in memory.

pub mod dynamo;
pub mod dynamo_budget;
pub mod dynamo_claims;
pub mod dynamo_state;
pub mod memory;
pub mod sqs_work;
pub mod workos;
