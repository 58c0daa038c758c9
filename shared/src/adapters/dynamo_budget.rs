//! The shared WorkOS request budget on DynamoDB: one counter item per one-second window in the
//! state table (`pk = budget#workos`, `sk = <window start ms>`), incremented with a conditional
//! `ADD`, so every process using the API key draws from the same allowance. The items expire.
//!
//! One write per WorkOS request: at 100 requests a second, far below what one item takes.

use std::time::Duration;

use crate::adapters::dynamo::{applied, n, s};
use crate::clock::EpochMillis;
use crate::ports::budget::RateBudget;
use crate::ports::StoreError;
use crate::schema::state::{PK, SK, TTL};

/// A per-key budget of `per_minute` requests, enforced per second.
#[derive(Debug, Clone)]
pub struct DynamoBudget {
    client: aws_sdk_dynamodb::Client,
    table: String,
    per_window: u64,
    window: Duration,
}

impl DynamoBudget {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>, per_minute: u32) -> Self {
        DynamoBudget {
            client,
            table: table.into(),
            per_window: (u64::from(per_minute) / 60).max(1),
            window: Duration::from_secs(1),
        }
    }
}

impl RateBudget for DynamoBudget {
    async fn take(&self, now: EpochMillis) -> Result<Option<EpochMillis>, StoreError> {
        let w = u64::try_from(self.window.as_millis()).unwrap_or(1000).max(1);
        let start = now.0 / w * w;
        let expires = EpochMillis(start)
            .saturating_add(Duration::from_secs(120))
            .to_seconds()
            .0;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s("budget#workos"))
            .key(SK, s(format!("{start:013}")))
            .update_expression("ADD #c :one SET #ttl = :exp")
            .condition_expression("attribute_not_exists(#c) OR #c < :limit")
            .expression_attribute_names("#c", "count")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":exp", n(expires))
            .expression_attribute_values(":limit", n(self.per_window))
            .send()
            .await;
        Ok(if applied(result)? {
            None
        } else {
            Some(EpochMillis(start + w))
        })
    }
}
