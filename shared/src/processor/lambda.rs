//! The processor behind the SQS event source: typed `SqsEvent` in, typed `SqsBatchResponse` out.
//! The local poller and the tests call [`handle`] too, so all of them run the same code.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};

use super::{Processor, Record, RecordOutcome};
use crate::clock::{Clock, EpochMillis};
use crate::directory::DirectoryApi;
use crate::ports::claims::ClaimStore;
use crate::ports::queue::WorkQueue;
use crate::ports::state::StateStore;
use crate::queue::{decode_body, ATTR_BODY_ENCODING, ATTR_SOURCE};

/// The record of an SQS message; a body the receiver had to base64-encode is decoded back to the
/// exact bytes WorkOS signed (an undecodable one becomes a record without a body: invalid).
pub fn record_of(m: &SqsMessage) -> Record {
    let encoding = m
        .message_attributes
        .get(ATTR_BODY_ENCODING)
        .and_then(|a| a.string_value.as_deref());
    let body = m.body.as_deref().and_then(|b| match decode_body(b, encoding) {
        Ok(body) => Some(body),
        Err(e) => {
            tracing::warn!(message_id = ?m.message_id, error = %e, "undecodable message body");
            None
        }
    });
    Record {
        message_id: m.message_id.clone().unwrap_or_default(),
        body,
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
        receive_count: m
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1),
        receipt: m.receipt_handle.clone(),
    }
}

/// Process one SQS batch; failed or deferred records are reported by message id so only they
/// come back (deferred ones after their delay). A record without a message id cannot be reported
/// alone: an empty identifier makes Lambda retry the whole batch, the safe default.
pub async fn handle<A, C, S, Q, K>(
    processor: &Processor<A, C, S, Q, K>,
    event: SqsEvent,
    deadline: EpochMillis,
) -> SqsBatchResponse
where
    A: DirectoryApi,
    C: ClaimStore,
    S: StateStore,
    Q: WorkQueue,
    K: Clock + Clone,
{
    let records: Vec<Record> = event.records.iter().map(record_of).collect();
    let outcomes = processor.process_batch(&records, deadline).await;
    let mut response = SqsBatchResponse::default();
    for (record, outcome) in records.iter().zip(&outcomes) {
        if let RecordOutcome::Retry { reason, delay } = outcome {
            if let (Some(d), Some(receipt)) = (delay, &record.receipt) {
                if let Err(e) = processor.engine().queue().defer(receipt, *d).await {
                    tracing::warn!(message_id = %record.message_id, error = %e, "could not set the retry delay; the queue's visibility timeout applies");
                }
            }
            tracing::debug!(message_id = %record.message_id, reason = %reason, "reporting batch item failure");
            response.add_failure(record.message_id.clone());
        }
    }
    response
}
