//! The processor behind the SQS event source: typed `SqsEvent` in, typed `SqsBatchResponse` out.
//! The local poller calls [`handle`] too, so both run the same code.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use super::{Processor, Record, RecordOutcome};
use crate::claims::ClaimStore;
use crate::clock::{Clock, EpochMillis};
use crate::directory::DirectoryApi;
use crate::queue::ATTR_SOURCE;
use crate::state::StateStore;

fn record_of(m: &SqsMessage) -> Record {
    Record {
        message_id: m.message_id.clone().unwrap_or_default(),
        body: m.body.clone(),
        source: m
            .message_attributes
            .get(ATTR_SOURCE)
            .and_then(|a| a.string_value.clone())
            .unwrap_or_else(|| "webhook".into()),
        received_at: m
            .attributes
            .get("SentTimestamp")
            .and_then(|t| t.parse().ok())
            .map(EpochMillis),
    }
}

/// Process one SQS batch; failed records are reported by message id so only they come back.
/// A record without a message id cannot be reported alone: an empty identifier makes Lambda
/// retry the whole batch, the safe default.
pub async fn handle<A, C, S, K>(
    processor: &Processor<A, C, S, K>,
    event: SqsEvent,
    deadline: EpochMillis,
) -> SqsBatchResponse
where
    A: DirectoryApi,
    C: ClaimStore,
    S: StateStore,
    K: Clock,
{
    let records: Vec<Record> = event.records.iter().map(record_of).collect();
    let outcomes = processor.process_batch(&records, deadline).await;
    let mut response = SqsBatchResponse::default();
    for (record, outcome) in records.iter().zip(&outcomes) {
        if let RecordOutcome::Retry { reason } = outcome {
            tracing::warn!(message_id = %record.message_id, reason = %reason, "reporting batch item failure");
            response.add_failure(record.message_id.clone());
        }
    }
    response
}
