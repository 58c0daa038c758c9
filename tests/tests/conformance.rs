//! The port conformance suite against the DynamoDB adapters on moto, through the AWS SDK. The
//! same suite runs against the in-memory adapters in `dsync`'s unit tests; here it also checks
//! that both bill the same capacity for the same operations. The work queue suite runs on SQS
//! (moto) and on the in-memory queue the simulations and benchmarks use.

use dsync::adapters::dynamo_claims::DynamoClaimStore;
use dsync::adapters::dynamo_state::DynamoStateStore;
use dsync::adapters::memory::{MemClaims, MemQueue, MemState};
use dsync::adapters::sqs_work::SqsWorkQueue;
use dsync::clock::SystemClock;
use dsync::conformance;

#[tokio::test]
async fn the_dynamodb_state_store_conforms_and_bills_like_the_in_memory_one() {
    let ddb = integration_tests::dynamodb().await;
    let table = integration_tests::unique("state");
    dsync::schema::create_state_table(&ddb, &table)
        .await
        .expect("state table");
    let real = conformance::state_store(DynamoStateStore::new(ddb, &table), "c").await;
    let fake = conformance::state_store(MemState::new(), "c").await;
    assert_eq!(real, fake, "read and write units, DynamoDB vs in memory");
}

#[tokio::test]
async fn the_dynamodb_claim_store_conforms() {
    let ddb = integration_tests::dynamodb().await;
    let table = integration_tests::unique("events");
    dsync::schema::create_events_table(&ddb, &table)
        .await
        .expect("events table");
    conformance::claim_store(DynamoClaimStore::new(ddb, &table), "c").await;
    conformance::claim_store(MemClaims::new(), "c").await;
}

/// The consumer side of an SQS queue, as the Lambda event source sees it.
struct SqsProbe {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

impl conformance::QueueProbe for SqsProbe {
    async fn receive(&self) -> Vec<conformance::Received> {
        use aws_sdk_sqs::types::MessageSystemAttributeName as Sys;
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(Sys::MessageGroupId)
            .message_system_attribute_names(Sys::ApproximateReceiveCount)
            .send()
            .await
            .expect("receive");
        out.messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let sys = m.attributes.clone().unwrap_or_default();
                conformance::Received {
                    body: m.body.clone().unwrap_or_default(),
                    group: sys.get(&Sys::MessageGroupId).cloned(),
                    attributes: m
                        .message_attributes
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                        .collect(),
                    receipt: m.receipt_handle.clone().unwrap_or_default(),
                    receive_count: sys
                        .get(&Sys::ApproximateReceiveCount)
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0),
                }
            })
            .collect()
    }

    async fn delete(&self, receipt: &str) {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .expect("delete");
    }
}

/// The in-memory queue the simulations and benchmarks use, as a consumer sees it.
struct MemProbe(MemQueue);

impl conformance::QueueProbe for MemProbe {
    async fn receive(&self) -> Vec<conformance::Received> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let got = self.0.receive(10);
            if !got.is_empty() || std::time::Instant::now() >= until {
                return got
                    .into_iter()
                    .map(|m| conformance::Received {
                        body: m.body,
                        group: m.group,
                        attributes: m.attributes.into_iter().collect(),
                        receipt: m.receipt,
                        receive_count: m.receive_count,
                    })
                    .collect();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn delete(&self, receipt: &str) {
        assert!(self.0.delete(receipt), "delete by the latest receipt");
    }
}

#[tokio::test]
async fn the_sqs_work_queue_conforms() {
    let sqs = integration_tests::sqs().await;
    let url = integration_tests::create_queue(&sqs, "wq").await;
    let queue = SqsWorkQueue::new(sqs.clone(), &url);
    conformance::work_queue(&queue, &SqsProbe { sqs, url }, "c").await;
}

#[tokio::test]
async fn the_in_memory_queue_conforms() {
    let q = MemQueue::new(SystemClock, std::time::Duration::from_secs(30), 5);
    conformance::work_queue(&q, &MemProbe(q.clone()), "c").await;
}
