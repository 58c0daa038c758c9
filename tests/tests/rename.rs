//! The seed scenario, end to end: WorkOS sandbox → signed webhook → receiver binary → SQS (moto)
//! → the local event-source poller → the processor → DynamoDB (moto).

use std::time::Duration;

use dsync::clock::{Clock, SystemClock};
use dsync::directory::CallBudget;
use dsync::poller::{drain, PollerConfig};
use dsync::signature::signature_header;
use integration_tests::stack::{config, Stack};
use integration_tests::{moto_url, spawn_receiver, sqs, unique};
use workos_sandbox::{route, SeedSpec, WebhookConfig};

const SECRET: &str = "whsec_rename";

/// A fresh queue (with DLQ) and the receiver binary in local mode enqueueing to it.
async fn queue_and_receiver(name: &str) -> (aws_sdk_sqs::Client, String, integration_tests::ChildGuard) {
    let sqs = sqs().await;
    let (queue, _dlq) = dsync::schema::create_queue_with_dlq(&sqs, &unique(name), 30, 3)
        .await
        .expect("queue");
    let rx = spawn_receiver(
        &moto_url(),
        &[("WORKOS_WEBHOOK_SECRET", SECRET), ("EVENTS_QUEUE_URL", &queue)],
    );
    (sqs, queue, rx)
}

fn poller() -> PollerConfig {
    PollerConfig {
        batch_size: 10,
        wait: Duration::from_secs(1),
        function_timeout: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn group_rename_converges_for_every_member_even_with_a_stale_payload() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Acme").group("Enterprise Admins", 50).group("Staff", 10));
    let dir = seeded.directory_id.clone();
    let admins = seeded.groups[0].clone();
    let rules = format!(
        r#"{{"by_group_id":{{"{}":["admin-console"]}},"by_group_name":{{"Platform Admins":["platform-settings"]}}}}"#,
        admins.id
    );
    let p = stack.processor_with(stack.workos(), config(&rules));
    p.reconcile(
        &dir,
        &CallBudget::until(SystemClock.now().saturating_add(Duration::from_secs(60))),
    )
    .await
    .expect("initial sync");
    for uid in &admins.user_ids {
        let u = stack.user(&dir, uid).await;
        assert_eq!(u.entitlements, ["admin-console"]);
        assert_eq!(u.group_names, ["Enterprise Admins"]);
    }

    let (sqs, queue, rx) = queue_and_receiver("rename").await;

    // The admin renames the group in the identity provider.
    stack
        .sandbox
        .rename_group(&admins.id, "Platform Admins")
        .expect("rename");
    // A webhook arrives whose payload still carries the OLD name.
    let body = serde_json::json!({
        "object": "event",
        "id": "event_rename_stale_payload",
        "event": "dsync.group.updated",
        "data": {
            "object": "directory_group", "id": admins.id, "directory_id": dir, "organization_id": seeded.organization_id,
            "idp_id": "okta-1", "name": "Enterprise Admins", "created_at": "2026-11-25T10:00:00.000Z",
            "updated_at": "2026-11-25T10:00:00.000Z", "raw_attributes": {}, "previous_attributes": {}
        },
        "created_at": dsync::event::format_created_at(SystemClock.now()),
    })
    .to_string();
    let resp = reqwest::Client::new()
        .post(rx.url("/webhooks/workos"))
        .header(
            "WorkOS-Signature",
            signature_header(SECRET, SystemClock.now(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);

    stack.sandbox.reset_calls();
    let report = drain(&sqs, &queue, &p, &SystemClock, poller(), 5).await.expect("poll");
    assert_eq!((report.received, report.deleted, report.failed), (1, 1, 0));

    // Every member shows the name WorkOS reports now, keeps the id-keyed entitlement, and the
    // name rule for the new name reached all 50 at once.
    for uid in &admins.user_ids {
        let u = stack.user(&dir, uid).await;
        assert_eq!(u.group_names, ["Platform Admins"], "{uid}");
        assert_eq!(u.entitlements, ["admin-console", "platform-settings"], "{uid}");
        assert!(u.is_current());
    }
    for uid in &seeded.groups[1].user_ids {
        let u = stack.user(&dir, uid).await;
        assert!(u.entitlements.is_empty());
    }
    // The app's read side sees the same: by directory and user, by user id alone, and the group's members.
    let reader = dsync::view::EntitlementReader::new(stack.dynamo.clone(), &stack.state_table);
    let first = &admins.user_ids[0];
    let view = reader.user(&dir, first).await.expect("read").expect("stored");
    assert!(view.has("admin-console") && view.has("platform-settings") && view.current);
    assert_eq!(view.groups, [(admins.id.clone(), "Platform Admins".to_string())]);
    assert_eq!(
        reader.user_by_id(first).await.expect("read").map(|v| v.directory_id),
        Some(dir.clone())
    );
    let mut expected = admins.user_ids.clone();
    expected.sort();
    assert_eq!(reader.group_members(&dir, &admins.id).await.expect("members"), expected);
    // Re-read by id: one GET of the group and one page of its members.
    assert_eq!(stack.sandbox.calls(route::GET_GROUP), 1);
    assert_eq!(stack.sandbox.calls(route::LIST_USERS), 1);
}

#[tokio::test]
async fn sandbox_webhooks_flow_through_receiver_queue_and_processor() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Flow").group("Enterprise Admins", 5));
    let dir = seeded.directory_id.clone();
    let admins = seeded.groups[0].clone();
    let p = stack.processor(r#"{"by_group_name":{"Enterprise Admins":["admin-console"]}}"#);
    let (sqs, queue, rx) = queue_and_receiver("flow").await;
    stack
        .sandbox
        .set_webhook(Some(WebhookConfig::new(rx.url("/webhooks/workos"), SECRET)));
    // Deliver twice each, newest first: order and duplicates must not matter.
    stack.sandbox.update_delivery(|m| {
        m.duplicate = 2;
        m.reorder = true;
    });
    let leaver = admins.user_ids[0].clone();
    stack.sandbox.remove_member(&leaver, &admins.id).expect("remove");
    let joiner = stack
        .sandbox
        .create_user(&dir, workos_sandbox::NewUser::new("new@example.com"))
        .expect("user");
    stack.sandbox.add_member(&joiner, &admins.id).expect("add");
    stack.sandbox.flush_deliveries();
    assert!(
        stack.sandbox.wait_deliveries(Duration::from_secs(10)).await,
        "deliveries did not finish"
    );
    assert!(
        stack.sandbox.deliveries().iter().all(|d| d.status == Some(200)),
        "{:?}",
        stack.sandbox.deliveries()
    );

    let report = drain(&sqs, &queue, &p, &SystemClock, poller(), 10).await.expect("poll");
    assert_eq!(report.failed, 0, "{report:?}");
    let leaver_view = stack.user(&dir, &leaver).await;
    assert!(leaver_view.entitlements.is_empty(), "{leaver_view:?}");
    let joiner_view = stack.user(&dir, &joiner).await;
    assert_eq!(joiner_view.entitlements, ["admin-console"]);
}

#[tokio::test]
async fn the_local_event_source_leaves_failures_for_retry_then_dead_letters_them() {
    let stack = Stack::new().await;
    stack
        .sandbox
        .seed_directory(SeedSpec::new("Dlq").group("Enterprise Admins", 1));
    let ev = stack.event("dsync.user.created", false);
    let p = stack.processor(r#"{"by_group_name":{"Enterprise Admins":["admin-console"]}}"#);
    let sqs = sqs().await;
    // Visibility 1 s, dead-lettered on the 2nd receive that fails.
    let (queue, dlq) = dsync::schema::create_queue_with_dlq(&sqs, &unique("dlq"), 1, 2)
        .await
        .expect("queue");
    sqs.send_message()
        .queue_url(&queue)
        .message_body(String::from_utf8_lossy(&ev.to_body()))
        .send()
        .await
        .expect("send");
    stack.sandbox.set_outage(true);
    let short = PollerConfig {
        batch_size: 10,
        wait: Duration::from_secs(1),
        function_timeout: Duration::from_secs(4),
    };
    let mut failed = 0;
    for _ in 0..6 {
        let r = dsync::poller::poll_once(&sqs, &queue, &p, &SystemClock, short)
            .await
            .expect("poll");
        failed += r.failed;
        assert_eq!(r.deleted, 0, "a failed message must stay on the queue");
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(failed, 2, "received and failed twice, then moved to the DLQ");
    let dead = integration_tests::drain(&sqs, &dlq).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].body.as_deref(),
        Some(String::from_utf8_lossy(&ev.to_body()).as_ref())
    );
}
