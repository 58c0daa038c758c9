//! The claim store on DynamoDB (see `ports::claims` for the semantics).

use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

use crate::adapters::dynamo::{applied, get_n, get_s, is_condition_failed, n, s, sdk_error};
use crate::clock::EpochMillis;
use crate::clock::EpochSeconds;
use crate::ports::claims::*;
use crate::ports::StoreError;
use crate::schema::events::{KEY, TTL};

#[derive(Debug, Clone)]
pub struct DynamoClaimStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoClaimStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoClaimStore {
            client,
            table: table.into(),
        }
    }
}

impl ClaimStore for DynamoClaimStore {
    async fn claim(&self, r: &ClaimRequest<'_>) -> Result<ClaimResult, StoreError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(r.event_id))
            .item("status", s(IN_PROGRESS))
            .item("token", s(r.token))
            .item("lease_until_ms", n(r.lease_until.0))
            .item(TTL, n(r.expires_at.0))
            .item("event_type", s(r.event_type))
            .item("source", s(r.source))
            .item("claimed_at_ms", n(r.now.0));
        if let Some(t) = r.received_at {
            put = put.item("received_at_ms", n(t.0));
        }
        let result = put
            .condition_expression(
                "attribute_not_exists(#k) OR #exp < :now_s OR (#st = :in_progress AND #lease < :now_ms)",
            )
            .expression_attribute_names("#k", KEY)
            .expression_attribute_names("#exp", TTL)
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#lease", "lease_until_ms")
            .expression_attribute_values(":now_s", n(r.now.to_seconds().0))
            .expression_attribute_values(":now_ms", n(r.now.0))
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(ClaimResult::Acquired),
            Err(e) if is_condition_failed(&e) => {
                let old = e.into_service_error();
                let item = match &old {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                        c.item.clone()
                    }
                    _ => None,
                };
                let Some(item) = item else {
                    // Some stand-ins omit the old item; read it.
                    return self.read_holder(r.event_id).await;
                };
                Ok(holder(&item))
            }
            Err(e) => Err(sdk_error(e)),
        }
    }

    async fn complete(&self, c: &Completion<'_>) -> Result<bool, StoreError> {
        let mut set = String::from(
            "SET #st = :completed, outcome = :outcome, workos_calls = :calls, done_at_ms = :done, #exp = :exp",
        );
        let mut up = self.client.update_item();
        if let Some(by) = c.applied_by {
            set.push_str(", applied_by = :by");
            up = up.expression_attribute_values(":by", s(by));
        }
        let result = up
            .table_name(&self.table)
            .key(KEY, s(c.event_id))
            .update_expression(format!("{set} REMOVE lease_until_ms"))
            .condition_expression("#tok = :token AND #st = :in_progress")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#exp", TTL)
            .expression_attribute_names("#tok", "token")
            .expression_attribute_values(":completed", s(COMPLETED))
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .expression_attribute_values(":outcome", s(c.outcome))
            .expression_attribute_values(":calls", n(u64::from(c.workos_calls)))
            .expression_attribute_values(":done", n(c.done_at.0))
            .expression_attribute_values(":exp", n(c.expires_at.0))
            .expression_attribute_values(":token", s(c.token))
            .send()
            .await;
        applied(result)
    }

    async fn release(&self, event_id: &str, token: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, s(event_id))
            .condition_expression("#tok = :token AND #st = :in_progress")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#tok", "token")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":in_progress", s(IN_PROGRESS))
            .send()
            .await;
        applied(result).map(|_| ())
    }

    async fn record_invalid(
        &self,
        key: &str,
        reason: &str,
        now: EpochMillis,
        expires_at: EpochSeconds,
    ) -> Result<(), StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(key))
            .item("status", s(INVALID))
            .item("reason", s(reason))
            .item("done_at_ms", n(now.0))
            .item(TTL, n(expires_at.0))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY)
            .send()
            .await;
        applied(result).map(|_| ())
    }
}

impl DynamoClaimStore {
    async fn read_holder(&self, event_id: &str) -> Result<ClaimResult, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, s(event_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        match out.item {
            Some(item) => Ok(holder(&item)),
            // Gone between our put and this read: report it as held so the message is retried.
            None => Ok(ClaimResult::HeldElsewhere {
                lease_until: EpochMillis(0),
            }),
        }
    }
}

fn holder(item: &crate::adapters::dynamo::Item) -> ClaimResult {
    match get_s(item, "status") {
        Some(IN_PROGRESS) => ClaimResult::HeldElsewhere {
            lease_until: EpochMillis(get_n(item, "lease_until_ms").unwrap_or(0)),
        },
        Some(other) => ClaimResult::AlreadyDone {
            status: other.to_string(),
        },
        None => ClaimResult::AlreadyDone {
            status: "UNKNOWN".into(),
        },
    }
}
