//! Table and queue layouts. `infra/template.yaml` declares the same key schemas (its test checks
//! the names); the local stack and the tests create resources with `create_*` below.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
};

/// The claims table: one item per WorkOS event id.
pub mod events {
    pub const KEY: &str = "event_id";
    pub const TTL: &str = "expires_at";
}

/// The state table: the directory picture and the entitlements derived from it.
pub mod state {
    pub const PK: &str = "pk";
    pub const SK: &str = "sk";
    /// Expiring items (a reconcile's fingerprints, run summaries) carry this TTL attribute.
    pub const TTL: &str = "expires_at";
}

fn attr(name: &str) -> Result<AttributeDefinition, String> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| e.to_string())
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, String> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| e.to_string())
}

fn sdk_err<E: std::error::Error + 'static>(e: aws_sdk_dynamodb::error::SdkError<E>) -> String {
    aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string()
}

/// Create the claims table (on-demand, TTL on `expires_at`).
pub async fn create_events_table(client: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), String> {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(events::KEY)?)
        .key_schema(key(events::KEY, KeyType::Hash)?)
        .send()
        .await
        .map_err(sdk_err)?;
    ttl(client, name, events::TTL).await
}

/// Create the state table (on-demand, `pk`/`sk`, TTL on `expires_at`). No index: every read the
/// pipeline and the gate make is a strongly consistent read of the base table.
pub async fn create_state_table(client: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), String> {
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(state::PK)?)
        .attribute_definitions(attr(state::SK)?)
        .key_schema(key(state::PK, KeyType::Hash)?)
        .key_schema(key(state::SK, KeyType::Range)?)
        .send()
        .await
        .map_err(sdk_err)?;
    ttl(client, name, state::TTL).await
}

async fn ttl(client: &aws_sdk_dynamodb::Client, table: &str, attribute: &str) -> Result<(), String> {
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(attribute)
                .enabled(true)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .send()
        .await
        .map_err(sdk_err)?;
    Ok(())
}

/// Create a queue with a dead-letter queue after `max_receive_count` receives. Returns (queue, dlq) URLs.
pub async fn create_queue_with_dlq(
    client: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_secs: u32,
    max_receive_count: u32,
) -> Result<(String, String), String> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let dlq = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .map_err(|e| err(&aws_sdk_sqs::error::DisplayErrorContext(&e)))?
        .queue_url
        .ok_or("no DLQ url")?;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| err(&aws_sdk_sqs::error::DisplayErrorContext(&e)))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or("no DLQ arn")?;
    let redrive =
        serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count.to_string() });
    let queue = client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_secs.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .map_err(|e| err(&aws_sdk_sqs::error::DisplayErrorContext(&e)))?
        .queue_url
        .ok_or("no queue url")?;
    Ok((queue, dlq))
}
