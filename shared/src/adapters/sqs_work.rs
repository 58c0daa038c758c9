//! The processor's work queue on SQS: continuations (with a delay, grouped by directory for fair
//! queues) and deferral of received messages (a visibility change).

use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;

use crate::ports::queue::{WorkQueue, WorkQueueError, CONTINUATION};
use crate::queue::ATTR_SOURCE;

/// SQS adapter of [`WorkQueue`].
#[derive(Debug, Clone)]
pub struct SqsWorkQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsWorkQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsWorkQueue {
            client,
            queue_url: queue_url.into(),
        }
    }
}

fn err<E: std::error::Error + 'static, R: std::fmt::Debug>(e: aws_sdk_sqs::error::SdkError<E, R>) -> WorkQueueError {
    WorkQueueError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
}

fn secs(d: Duration, max: u64) -> i32 {
    i32::try_from(d.as_secs().min(max)).unwrap_or(0)
}

impl WorkQueue for SqsWorkQueue {
    async fn continue_later(&self, directory_id: &str, delay: Duration) -> Result<(), WorkQueueError> {
        let body = serde_json::json!({ "object": CONTINUATION, "directory_id": directory_id }).to_string();
        let source = MessageAttributeValue::builder()
            .data_type("String")
            .string_value("continuation")
            .build()
            .map_err(|e| WorkQueueError(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_group_id(directory_id)
            .delay_seconds(secs(delay, 900))
            .message_attributes(ATTR_SOURCE, source)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn defer(&self, receipt_handle: &str, delay: Duration) -> Result<(), WorkQueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs(delay, 43_200))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }
}
