//! The claim store against moto's DynamoDB: units, leases at the edges, expiry, ownership.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dsync::adapters::dynamo_claims::DynamoClaimStore;
use dsync::clock::{Clock, EpochMillis, EpochSeconds, SystemClock};
use dsync::ports::claims::{ClaimRequest, ClaimResult, ClaimStore, Completion};
use integration_tests::{dynamodb, unique};

async fn store() -> (DynamoClaimStore, aws_sdk_dynamodb::Client, String) {
    let client = dynamodb().await;
    let table = unique("claims");
    dsync::schema::create_events_table(&client, &table)
        .await
        .expect("table");
    (DynamoClaimStore::new(client.clone(), &table), client, table)
}

fn req<'a>(
    id: &'a str,
    token: &'a str,
    now: EpochMillis,
    lease_until: EpochMillis,
    expires_at: EpochSeconds,
) -> ClaimRequest<'a> {
    ClaimRequest {
        event_id: id,
        event_type: "dsync.user.updated",
        source: "webhook",
        token,
        now,
        lease_until,
        expires_at,
        received_at: None,
    }
}

#[tokio::test]
async fn a_lease_with_no_time_left_is_still_written_and_expires_at_once() {
    let (claims, client, table) = store().await;
    let now = SystemClock.now();
    let exp = now.to_seconds().saturating_add(Duration::from_secs(86_400));
    // Remaining time 0 (Powertools python#4759 wrote no lease then, and the claim stuck).
    assert_eq!(
        claims.claim(&req("e1", "a", now, now, exp)).await.expect("claim"),
        ClaimResult::Acquired
    );
    let item = client
        .get_item()
        .table_name(&table)
        .key("event_id", AttributeValue::S("e1".into()))
        .send()
        .await
        .expect("get")
        .item
        .expect("item");
    let lease = item
        .get("lease_until_ms")
        .and_then(|v| v.as_n().ok())
        .expect("lease written");
    let ttl = item.get("expires_at").and_then(|v| v.as_n().ok()).expect("ttl written");
    assert_eq!(lease.len(), 13, "lease in epoch milliseconds: {lease}");
    assert_eq!(ttl.len(), 10, "expires_at in epoch seconds: {ttl}");
    let later = now.saturating_add(Duration::from_millis(1));
    assert_eq!(
        claims.claim(&req("e1", "b", later, later, exp)).await.expect("claim"),
        ClaimResult::Acquired
    );
}

#[tokio::test]
async fn a_live_lease_holds_and_names_its_end() {
    let (claims, _, _) = store().await;
    let now = SystemClock.now();
    let exp = now.to_seconds().saturating_add(Duration::from_secs(86_400));
    let lease = now.saturating_add(Duration::from_secs(30));
    claims.claim(&req("e2", "a", now, lease, exp)).await.expect("claim");
    // One second later in milliseconds is far less than the lease: a seconds/millis mix-up
    // (Powertools java#1281) would read the lease as long expired.
    let soon = now.saturating_add(Duration::from_secs(1));
    assert_eq!(
        claims.claim(&req("e2", "b", soon, soon, exp)).await.expect("claim"),
        ClaimResult::HeldElsewhere { lease_until: lease }
    );
}

#[tokio::test]
async fn completion_release_and_expiry() {
    let (claims, _, _) = store().await;
    let now = SystemClock.now();
    let exp = now.to_seconds().saturating_add(Duration::from_secs(86_400));
    let lease = now.saturating_add(Duration::from_secs(30));
    claims.claim(&req("e3", "mine", now, lease, exp)).await.expect("claim");
    // Another token can neither complete nor release it.
    let theirs = Completion {
        applied_by: None,
        event_id: "e3",
        token: "theirs",
        outcome: "refetched",
        workos_calls: 1,
        done_at: now,
        expires_at: exp,
    };
    assert!(!claims.complete(&theirs).await.expect("complete"));
    claims.release("e3", "theirs").await.expect("no-op");
    let mine = Completion {
        token: "mine",
        ..theirs
    };
    assert!(claims.complete(&mine).await.expect("complete"));
    let later = now.saturating_add(Duration::from_secs(60));
    assert_eq!(
        claims.claim(&req("e3", "x", later, later, exp)).await.expect("claim"),
        ClaimResult::AlreadyDone {
            status: "COMPLETED".into()
        }
    );
    // Once `expires_at` has passed, the record no longer counts, whether or not TTL removed it.
    let past = EpochSeconds(now.to_seconds().0 - 1);
    claims.claim(&req("e4", "a", now, lease, exp)).await.expect("claim");
    assert!(claims
        .complete(&Completion {
            event_id: "e4",
            token: "a",
            expires_at: past,
            ..mine
        })
        .await
        .expect("complete"));
    assert_eq!(
        claims.claim(&req("e4", "b", now, lease, exp)).await.expect("claim"),
        ClaimResult::Acquired
    );
    // A released claim can be taken at once.
    claims.release("e4", "b").await.expect("release");
    assert_eq!(
        claims.claim(&req("e4", "c", now, lease, exp)).await.expect("claim"),
        ClaimResult::Acquired
    );
}
