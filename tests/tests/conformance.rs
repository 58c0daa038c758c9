//! The port conformance suite against the DynamoDB adapters on moto, through the AWS SDK. The
//! same suite runs against the in-memory adapters in `dsync`'s unit tests; here it also checks
//! that both bill the same capacity for the same operations.

use dsync::adapters::dynamo_claims::DynamoClaimStore;
use dsync::adapters::dynamo_state::DynamoStateStore;
use dsync::adapters::memory::{MemClaims, MemState};
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
