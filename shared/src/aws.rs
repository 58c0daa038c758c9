//! Building AWS SDK configuration once, with bounded timeouts and retries.
//!
//! Endpoints are not set here: `aws-config` honours `AWS_ENDPOINT_URL` (and the per-service
//! `AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_DYNAMODB`), which is how the local stand-ins are used.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;

/// Time budget for SDK calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdkBudget {
    /// The whole operation, retries included.
    pub operation: Duration,
    /// One attempt.
    pub attempt: Duration,
    pub connect: Duration,
    pub max_attempts: u32,
}

impl SdkBudget {
    /// For the receiver: WorkOS waits about 5 s, so everything must be done well before.
    pub const RECEIVER: SdkBudget = SdkBudget {
        operation: Duration::from_millis(2500),
        attempt: Duration::from_millis(1000),
        connect: Duration::from_millis(500),
        max_attempts: 3,
    };
    /// For the processor and tools.
    pub const WORKER: SdkBudget = SdkBudget {
        operation: Duration::from_secs(10),
        attempt: Duration::from_secs(3),
        connect: Duration::from_secs(1),
        max_attempts: 3,
    };
}

/// Load the SDK configuration from the environment (region, credentials, endpoint overrides).
pub async fn load_sdk_config(budget: SdkBudget) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(budget.operation)
                .operation_attempt_timeout(budget.attempt)
                .connect_timeout(budget.connect)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(budget.max_attempts))
        .load()
        .await
}

pub use aws_config::SdkConfig;
pub use aws_sdk_dynamodb::Client as DynamoClient;
pub use aws_sdk_sqs::Client as SqsClient;
