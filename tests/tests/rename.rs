//! The seed scenario, end to end: WorkOS sandbox → signed webhook → receiver binary → SQS (moto)
//! → the local event-source poller → the processor → DynamoDB (moto).

use std::time::Duration;

use dsync::adapters::dynamo_state::DynamoStateStore;
use dsync::clock::{Clock, SystemClock};
use dsync::poller::{poll_once, PollReport, PollerConfig};
use dsync::signature::signature_header;
use dsync::view::{EntitlementReader, Lookup};
use integration_tests::stack::{config, ents, reconcile, RealProcessor, Stack};
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

/// Poll until the queue holds nothing at all (deferred events and continuations included).
async fn drain_all(sqs: &aws_sdk_sqs::Client, queue: &str, p: &RealProcessor, within: Duration) -> PollReport {
    let started = std::time::Instant::now();
    let mut total = PollReport::default();
    loop {
        let r = poll_once(sqs, queue, p, &SystemClock, poller()).await.expect("poll");
        total.received += r.received;
        total.deleted += r.deleted;
        total.failed += r.failed;
        if r.received == 0 && dsync::poller::depth(sqs, queue).await.expect("depth") == 0 {
            return total;
        }
        if started.elapsed() > within {
            let left = integration_tests::drain(sqs, queue).await;
            let bodies: Vec<&str> = left.iter().filter_map(|m| m.body.as_deref()).collect();
            panic!("queue not empty after {within:?}: {total:?}; left: {bodies:#?}");
        }
    }
}

fn reader(stack: &Stack) -> EntitlementReader<DynamoStateStore> {
    EntitlementReader::new(stack.state())
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
        r#"{{"organizations":{{"{}":{{"by_group_id":{{"{}":["admin-console"]}},"by_group_name":{{"Platform Admins":["platform-settings"]}}}}}}}}"#,
        seeded.organization_id, admins.id
    );
    let (sqs, queue, rx) = queue_and_receiver("rename").await;
    let p = stack.processor_on(&queue, config(&rules));
    reconcile(&p, &dir).await;
    for uid in &admins.user_ids {
        let u = stack.user(&dir, uid).await;
        assert_eq!(ents(&u), ["admin-console"]);
        assert_eq!(stack.group_names(&dir, uid).await, ["Enterprise Admins"]);
    }

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
    let report = drain_all(&sqs, &queue, &p, Duration::from_secs(30)).await;
    assert_eq!((report.received, report.deleted, report.failed), (1, 1, 0));

    // Every member shows the name WorkOS reports now, keeps the id-keyed entitlement, and the
    // name rule for the new name reached all 50 at once.
    for uid in &admins.user_ids {
        let u = stack.user(&dir, uid).await;
        assert_eq!(stack.group_names(&dir, uid).await, ["Platform Admins"], "{uid}");
        assert_eq!(ents(&u), ["admin-console", "platform-settings"], "{uid}");
    }
    for uid in &seeded.groups[1].user_ids {
        let u = stack.user(&dir, uid).await;
        assert!(u.entitlements.is_empty());
    }
    // The app's read side sees the same: by directory and user, by user id alone, by e-mail and
    // IdP id within the organization, and the group's members.
    let reader = reader(&stack);
    let first = &admins.user_ids[0];
    let Lookup::Found(view) = reader.user(&dir, first).await.expect("read") else {
        panic!("{first} not found")
    };
    assert!(view.allows("admin-console") && view.allows("platform-settings") && view.is_current());
    assert_eq!(view.groups, std::slice::from_ref(&admins.id));
    match reader.user_by_id(first).await.expect("read") {
        Lookup::Found(v) => assert_eq!(v.directory_id, dir),
        other => panic!("by id: {other:?}"),
    }
    let email = stack.sandbox.user(first).expect("sandbox user").email;
    let idp = stack.sandbox.user(first).expect("sandbox user").idp_id;
    for found in [
        reader
            .user_by_email(&seeded.organization_id, &email.to_uppercase())
            .await
            .expect("read"),
        reader
            .user_by_idp_id(&seeded.organization_id, &idp)
            .await
            .expect("read"),
    ] {
        match found {
            Lookup::Found(v) => assert_eq!(&v.user_id, first),
            other => panic!("look-up: {other:?}"),
        }
    }
    assert_eq!(
        reader.user_by_email("org_someone_else", &email).await.expect("read"),
        Lookup::NotFound,
        "look-ups never cross organizations"
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Flow").group("Enterprise Admins", 5));
    let dir = seeded.directory_id.clone();
    let admins = seeded.groups[0].clone();
    let (sqs, queue, rx) = queue_and_receiver("flow").await;
    let rules = format!(
        r#"{{"organizations":{{"{}":{{"by_group_name":{{"Enterprise Admins":["admin-console"]}}}}}}}}"#,
        seeded.organization_id
    );
    let p = stack.processor_on(&queue, config(&rules));
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

    drain_all(&sqs, &queue, &p, Duration::from_secs(90)).await;
    let leaver_view = stack.user(&dir, &leaver).await;
    assert!(leaver_view.entitlements.is_empty(), "{leaver_view:?}");
    let joiner_view = stack.user(&dir, &joiner).await;
    assert_eq!(ents(&joiner_view), ["admin-console"]);
    // Every delivered event is COMPLETED.
    let delivered: std::collections::BTreeSet<String> =
        stack.sandbox.deliveries().into_iter().map(|d| d.event_id).collect();
    assert!(!delivered.is_empty());
    for e in stack.sandbox.events().into_iter().filter(|e| delivered.contains(&e.id)) {
        let claim = stack
            .dynamo
            .get_item()
            .table_name(&stack.events_table)
            .key("event_id", aws_sdk_dynamodb::types::AttributeValue::S(e.id.clone()))
            .consistent_read(true)
            .send()
            .await
            .expect("read claim")
            .item
            .unwrap_or_else(|| panic!("no claim for {}", e.id));
        assert_eq!(
            claim.get("status").and_then(|s| s.as_s().ok()).map(String::as_str),
            Some("COMPLETED"),
            "{}",
            e.event
        );
    }
}

#[tokio::test]
async fn the_local_event_source_leaves_failures_for_retry_then_dead_letters_them() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let stack = Stack::new().await;
    stack
        .sandbox
        .seed_directory(SeedSpec::new("Dlq").group("Enterprise Admins", 1));
    let ev = stack.event("dsync.user.created", false);
    let sqs = sqs().await;
    // Visibility 1 s, dead-lettered on the 2nd receive that fails.
    let (queue, dlq) = dsync::schema::create_queue_with_dlq(&sqs, &unique("dlq"), 1, 2)
        .await
        .expect("queue");
    let mut cfg = config("{}");
    cfg.engine.retry_after_failure = Duration::from_secs(1);
    let p = stack.processor_on(&queue, cfg);
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
    for _ in 0..8 {
        let r = dsync::poller::poll_once(&sqs, &queue, &p, &SystemClock, short)
            .await
            .expect("poll");
        failed += r.failed;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // The event failed twice and went to the DLQ; continuations (the directory's work, asking to
    // be retried) come and go beside it.
    assert!(failed >= 2, "the event was received and failed twice: {failed}");
    let dead = integration_tests::drain(&sqs, &dlq).await;
    let body = String::from_utf8_lossy(&ev.to_body()).into_owned();
    assert_eq!(
        dead.iter().filter(|m| m.body.as_deref() == Some(body.as_str())).count(),
        1,
        "the event is in the DLQ once"
    );
}
