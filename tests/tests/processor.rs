//! The processor against real parts: the WorkOS sandbox over HTTP, moto's DynamoDB via the SDK.

use std::time::{Duration, Instant};

use dsync::claims::{ClaimRequest, ClaimStore};
use dsync::clock::{Clock, EpochMillis, SystemClock};
use dsync::directory::{ApiError, CallBudget, DirGroup, DirUser, DirectoryApi};
use dsync::processor::{Record, RecordOutcome};
use dsync::state::StateStore;
use integration_tests::stack::{config, record, Stack};
use workos_sandbox::{route, Fault, NewUser, SeedSpec};

const ADMIN_RULE: &str = r#"{"by_group_id":{},"by_group_name":{"Enterprise Admins":["admin-console"]}}"#;

fn deadline_in(d: Duration) -> EpochMillis {
    SystemClock.now().saturating_add(d)
}

fn minute() -> EpochMillis {
    deadline_in(Duration::from_secs(60))
}

fn done_how(o: &RecordOutcome) -> Option<&'static str> {
    match o {
        RecordOutcome::Done { how, .. } => Some(how),
        _ => None,
    }
}

#[tokio::test]
async fn duplicates_cost_one_refetch() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Dup").group("Enterprise Admins", 3));
    let uid = &seeded.groups[0].user_ids[0];
    stack
        .sandbox
        .update_user(
            uid,
            workos_sandbox::UserUpdate {
                first_name: Some("Renamed".into()),
                ..Default::default()
            },
        )
        .expect("update");
    let ev = stack.event("dsync.user.updated", true);
    let p = stack.processor(ADMIN_RULE);
    stack.sandbox.reset_calls();

    // Three deliveries of one event id: two in one batch, one in a later batch.
    let out = p.process_batch(&[record(&ev), record(&ev)], minute()).await;
    let later = p.process_batch(&[record(&ev)], minute()).await;
    let all: Vec<&RecordOutcome> = out.iter().chain(later.iter()).collect();
    assert_eq!(
        all.iter().filter(|o| done_how(o) == Some("refetched")).count(),
        1,
        "{all:?}"
    );
    assert_eq!(
        all.iter()
            .filter(|o| matches!(o, RecordOutcome::Duplicate { .. }))
            .count(),
        2,
        "{all:?}"
    );
    assert_eq!(
        stack.sandbox.calls(route::GET_USER),
        1,
        "one re-fetch for three deliveries"
    );
    let user = stack.user(&seeded.directory_id, uid).await;
    assert_eq!(user.entitlements, vec!["admin-console".to_string()]);
    assert!(user.is_current());
}

#[tokio::test]
async fn user_deleted_before_created_leaves_no_entitlements() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Order").group("Enterprise Admins", 1));
    let dir = &seeded.directory_id;
    let gid = &seeded.groups[0].id;
    let uid = stack
        .sandbox
        .create_user(dir, NewUser::new("late@example.com"))
        .expect("user");
    stack.sandbox.add_member(&uid, gid).expect("add");
    let created = stack.event("dsync.user.created", true);
    let added = stack.event("dsync.group.user_added", true);
    stack.sandbox.delete_user(&uid).expect("delete");
    let deleted = stack.event("dsync.user.deleted", true);
    let p = stack.processor(ADMIN_RULE);

    // Delivered newest first.
    for ev in [&deleted, &added, &created] {
        let out = p.process_batch(&[record(ev)], minute()).await;
        assert!(done_how(&out[0]).is_some(), "{out:?}");
    }
    let user = stack.user(dir, &uid).await;
    assert_eq!(user.state, Some(dsync::directory::UserState::Deleted));
    assert!(user.entitlements.is_empty(), "{user:?}");
}

#[tokio::test]
async fn group_deleted_takes_away_what_it_granted() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("GDel").group("Enterprise Admins", 4).group("Staff", 4));
    let dir = &seeded.directory_id;
    let p = stack.processor(ADMIN_RULE);
    p.reconcile(dir, &CallBudget::until(minute()))
        .await
        .expect("initial reconcile");
    let admins = &seeded.groups[0];
    for uid in &admins.user_ids {
        let u = stack.user(dir, uid).await;
        assert_eq!(u.entitlements, vec!["admin-console".to_string()]);
    }
    stack.sandbox.delete_group(&admins.id).expect("delete group");
    let ev = stack.event("dsync.group.deleted", true);
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("refetched"), "{out:?}");
    for uid in &admins.user_ids {
        let u = stack.user(dir, uid).await;
        assert!(u.entitlements.is_empty(), "{u:?}");
        assert!(!u.group_ids.contains(&admins.id));
    }
    assert!(stack
        .state()
        .group(dir, &admins.id)
        .await
        .expect("read")
        .expect("tombstone")
        .name
        .is_none());
    assert!(stack
        .state()
        .group_member_ids(dir, &admins.id)
        .await
        .expect("members")
        .is_empty());
}

#[tokio::test]
async fn directory_deleted_is_purged() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Gone").group("Enterprise Admins", 3));
    let dir = &seeded.directory_id;
    let p = stack.processor(ADMIN_RULE);
    p.reconcile(dir, &CallBudget::until(minute())).await.expect("reconcile");
    assert!(!stack.state().snapshot(dir).await.expect("snapshot").users.is_empty());
    stack.sandbox.delete_directory(dir).expect("delete directory");
    let ev = stack.event("dsync.deleted", true);
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("purged"), "{out:?}");
    let snap = stack.state().snapshot(dir).await.expect("snapshot");
    assert!(snap.users.is_empty() && snap.groups.is_empty() && snap.edges.is_empty());
}

#[tokio::test]
async fn rate_limited_then_processed_after_the_wait() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("RL").group("Enterprise Admins", 1));
    let ev = stack.event("dsync.user.created", false);
    stack.sandbox.reset_calls();
    stack.sandbox.inject(route::GET_USER, 1, Fault::rate_limited(1));
    let p = stack.processor(ADMIN_RULE);
    let started = Instant::now();
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("refetched"), "{out:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(stack.sandbox.calls_with_status(route::GET_USER, 429), 1);
    assert_eq!(stack.sandbox.calls_with_status(route::GET_USER, 200), 1);
    let uid = &seeded.groups[0].user_ids[0];
    let u = stack.user(&seeded.directory_id, uid).await;
    assert_eq!(u.entitlements, vec!["admin-console".to_string()]);
}

#[tokio::test]
async fn workos_down_past_the_deadline_releases_the_claim_and_the_retry_succeeds() {
    let stack = Stack::new().await;
    stack
        .sandbox
        .seed_directory(SeedSpec::new("Down").group("Enterprise Admins", 1));
    let ev = stack.event("dsync.user.created", false);
    let p = stack.processor(ADMIN_RULE);
    stack.sandbox.set_outage(true);
    let started = Instant::now();
    let deadline = deadline_in(Duration::from_secs(6));
    let out = p.process_batch(&[record(&ev)], deadline).await;
    assert!(out[0].is_failure(), "{out:?}");
    // It stopped calling WorkOS in time to release its claim: a few attempts, not a retry loop,
    // and back well within the deadline plus what the claim release costs on a busy moto.
    let attempts = stack.sandbox.calls_with_status(route::GET_USER, 503);
    assert!((1..=4).contains(&attempts), "{attempts} attempts");
    assert!(
        SystemClock.now() < deadline.saturating_add(Duration::from_secs(3)),
        "still busy long after the deadline ({:?})",
        started.elapsed()
    );
    // The claim was released: nothing is stored under the event id.
    let item = stack
        .dynamo
        .get_item()
        .table_name(&stack.events_table)
        .key("event_id", aws_sdk_dynamodb::types::AttributeValue::S(ev.id.clone()))
        .consistent_read(true)
        .send()
        .await
        .expect("get");
    assert!(item.item.is_none(), "claim left behind: {:?}", item.item);

    stack.sandbox.set_outage(false);
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("refetched"), "{out:?}");
}

#[tokio::test]
async fn a_crashed_runs_claim_is_taken_over_once_its_lease_ends() {
    let stack = Stack::new().await;
    stack
        .sandbox
        .seed_directory(SeedSpec::new("Crash").group("Enterprise Admins", 1));
    let ev = stack.event("dsync.user.created", false);
    // A run that claimed the event and died: its lease ends 5 s from now.
    let now = SystemClock.now();
    let crashed = ClaimRequest {
        event_id: &ev.id,
        event_type: &ev.event,
        source: "webhook",
        token: "crashed-run",
        now,
        lease_until: now.saturating_add(Duration::from_secs(5)),
        expires_at: now.to_seconds().saturating_add(Duration::from_secs(86_400)),
        received_at: None,
    };
    assert_eq!(
        stack.claims().claim(&crashed).await.expect("claim"),
        dsync::claims::ClaimResult::Acquired
    );
    let p = stack.processor(ADMIN_RULE);
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert!(
        out[0].is_failure(),
        "a live lease must make the message come back later: {out:?}"
    );
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("refetched"), "{out:?}");
    // The crashed run can no longer complete or release what is not its claim any more.
    stack
        .claims()
        .release(&ev.id, "crashed-run")
        .await
        .expect("release is a no-op");
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert!(matches!(out[0], RecordOutcome::Duplicate { .. }), "{out:?}");
}

#[tokio::test]
async fn poison_messages_are_recorded_and_not_retried() {
    let stack = Stack::new().await;
    let p = stack.processor(ADMIN_RULE);
    let bodies = [
        None,
        Some("not json"),
        Some("[]"),
        Some(r#"{"event":"dsync.user.created"}"#),
        Some(r#"{"id":"e1","event":"dsync.user.updated","data":{"id":"u"}}"#),
    ];
    let records: Vec<Record> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Record {
            message_id: format!("poison-{i}"),
            body: b.map(str::to_string),
            source: "webhook".into(),
            received_at: None,
        })
        .collect();
    let out = p.process_batch(&records, minute()).await;
    assert!(
        out.iter().all(|o| matches!(o, RecordOutcome::Invalid { .. })),
        "{out:?}"
    );
}

#[tokio::test]
async fn an_event_older_than_the_last_read_is_skipped_without_calls() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Skip").group("Enterprise Admins", 2));
    let ev = stack.event("dsync.user.created", false);
    let mut cfg = config(ADMIN_RULE);
    cfg.skip_margin = Duration::from_millis(100);
    let p = stack.processor_with(stack.workos(), cfg);
    tokio::time::sleep(Duration::from_millis(150)).await;
    p.reconcile(&seeded.directory_id, &CallBudget::until(minute()))
        .await
        .expect("reconcile");
    stack.sandbox.reset_calls();
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("skipped"), "{out:?}");
    assert_eq!(stack.sandbox.call_stats().iter().map(|c| c.count).sum::<u64>(), 0);
}

#[tokio::test]
async fn initial_sync_costs_list_calls_not_per_user_gets() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Big").group("Enterprise Admins", 250));
    let events: Vec<workos_sandbox::Event> = stack
        .sandbox
        .events()
        .into_iter()
        .filter(|e| e.event == "dsync.user.created")
        .collect();
    assert_eq!(events.len(), 250);
    let mut cfg = config(ADMIN_RULE);
    cfg.skip_margin = Duration::from_millis(100);
    let p = stack.processor_with(stack.workos(), cfg);
    tokio::time::sleep(Duration::from_millis(150)).await;
    stack.sandbox.reset_calls();
    let mut how = std::collections::BTreeMap::<&str, usize>::new();
    for batch in events.chunks(10) {
        let records: Vec<Record> = batch.iter().map(record).collect();
        for o in p.process_batch(&records, minute()).await {
            if let RecordOutcome::Retry { reason } = &o {
                eprintln!("retry: {reason}");
            }
            *how.entry(done_how(&o).unwrap_or("not done")).or_default() += 1;
        }
    }
    let calls: u64 = stack.sandbox.call_stats().iter().map(|c| c.count).sum();
    // 3 pages of users + 1 of groups + 3 of the group's members, once; every later batch is
    // already reflected by that read.
    assert!(
        calls <= 10,
        "{calls} calls for 250 users: {:?} {how:?}",
        stack.sandbox.call_stats()
    );
    assert_eq!(how.get("reconciled"), Some(&10), "{how:?}");
    assert_eq!(how.get("skipped"), Some(&240), "{how:?}");
    assert_eq!(stack.sandbox.calls(route::GET_USER), 0);
    let snap = stack.state().snapshot(&seeded.directory_id).await.expect("snapshot");
    assert_eq!(
        snap.users
            .iter()
            .filter(|u| u.entitlements == ["admin-console"])
            .count(),
        250
    );
}

/// Delegates to WorkOS, but holds the *result* of some calls until released: a read that began
/// early and finishes late, or a run that hangs until it is killed.
struct Gated<A> {
    inner: A,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
    /// Only `list_user_groups` for this user is held (when set).
    hold_user: Option<String>,
}

impl<A: DirectoryApi> DirectoryApi for Gated<A> {
    async fn get_user(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        self.inner.get_user(d, u, b).await
    }
    async fn get_group(&self, d: &str, g: &str, b: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.inner.get_group(d, g, b).await
    }
    async fn list_user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Vec<DirGroup>, ApiError> {
        let result = self.inner.list_user_groups(d, u, b).await;
        if self.hold_user.as_deref() == Some(u) {
            let _permit = self.gate.acquire().await;
        }
        result
    }
    async fn list_group_users(&self, d: &str, g: &str, b: &CallBudget) -> Result<Vec<DirUser>, ApiError> {
        let result = self.inner.list_group_users(d, g, b).await;
        if self.hold_user.is_none() {
            let _permit = self.gate.acquire().await;
        }
        result
    }
    async fn list_directory_users(&self, d: &str, b: &CallBudget) -> Result<Vec<DirUser>, ApiError> {
        self.inner.list_directory_users(d, b).await
    }
    async fn list_directory_groups(&self, d: &str, b: &CallBudget) -> Result<Vec<DirGroup>, ApiError> {
        self.inner.list_directory_groups(d, b).await
    }
}

#[tokio::test]
async fn overlapping_reconciles_keep_the_newer_state() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Race").group("Enterprise Admins", 2));
    let dir = seeded.directory_id.clone();
    let admins = seeded.groups[0].clone();
    let leaver = admins.user_ids[0].clone();

    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let slow = stack.processor_with(
        Gated {
            inner: stack.workos(),
            gate: gate.clone(),
            hold_user: None,
        },
        config(ADMIN_RULE),
    );
    let fast = stack.processor(ADMIN_RULE);
    let old_read = async {
        slow.reconcile(&dir, &CallBudget::until(minute()))
            .await
            .expect("old reconcile");
    };
    let new_read = async {
        // Let the old reconcile read the old state (leaver still a member) and stall.
        while stack.sandbox.calls(route::LIST_USERS) < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stack.sandbox.remove_member(&leaver, &admins.id).expect("remove");
        fast.reconcile(&dir, &CallBudget::until(minute()))
            .await
            .expect("new reconcile");
        gate.add_permits(10);
    };
    tokio::join!(old_read, new_read);

    let u = stack.user(&dir, &leaver).await;
    assert!(
        u.entitlements.is_empty(),
        "the older read overwrote the newer state: {u:?}"
    );
    assert!(!stack
        .state()
        .group_member_ids(&dir, &admins.id)
        .await
        .expect("members")
        .contains(&leaver));
    let stayer = stack.user(&dir, &admins.user_ids[1]).await;
    assert_eq!(stayer.entitlements, vec!["admin-console".to_string()]);
}

#[tokio::test]
async fn a_crash_mid_batch_loses_nothing_and_repeats_nothing() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Crash").group("Enterprise Admins", 3));
    let dir = seeded.directory_id.clone();
    let events: Vec<workos_sandbox::Event> = stack
        .sandbox
        .events()
        .into_iter()
        .filter(|e| e.event == "dsync.user.created")
        .collect();
    let records: Vec<Record> = events.iter().map(record).collect();
    let stuck_user = seeded.groups[0].user_ids[2].clone();

    // The first run hangs on one user's read and is killed while the other two are done.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let hanging = std::sync::Arc::new(stack.processor_with(
        Gated {
            inner: stack.workos(),
            gate,
            hold_user: Some(stuck_user.clone()),
        },
        config(ADMIN_RULE),
    ));
    let lease_ends = deadline_in(Duration::from_secs(15));
    let run = {
        let (p, r) = (hanging.clone(), records.clone());
        tokio::spawn(async move { p.process_batch(&r, lease_ends).await })
    };
    let done_before_crash = async {
        loop {
            let mut done = 0;
            for uid in &seeded.groups[0].user_ids[..2] {
                if stack
                    .state()
                    .user(&dir, uid)
                    .await
                    .expect("read")
                    .is_some_and(|u| u.is_current() && !u.entitlements.is_empty())
                {
                    done += 1;
                }
            }
            if done == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), done_before_crash)
        .await
        .expect("two users processed");
    tokio::time::sleep(Duration::from_millis(300)).await; // let their claims be marked completed
    run.abort();
    let finished = run.await;
    assert!(finished.is_err(), "the run was killed, not finished: {finished:?}");

    // Redelivered at once: the finished ones are duplicates; the stuck one is still leased.
    let p = stack.processor(ADMIN_RULE);
    stack.sandbox.reset_calls();
    let out = p.process_batch(&records, minute()).await;
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, RecordOutcome::Duplicate { .. }))
            .count(),
        2,
        "{out:?}"
    );
    assert_eq!(out.iter().filter(|o| o.is_failure()).count(), 1, "{out:?}");
    assert_eq!(
        stack.sandbox.calls(route::GET_USER),
        0,
        "nothing re-read for finished events"
    );

    // After the crashed run's lease ends, the last one is taken over and finished.
    while SystemClock.now() <= lease_ends {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = p.process_batch(&records, minute()).await;
    assert_eq!(
        out.iter().filter(|o| done_how(o) == Some("refetched")).count(),
        1,
        "{out:?}"
    );
    assert_eq!(stack.sandbox.calls(route::GET_USER), 1);
    let u = stack.user(&dir, &stuck_user).await;
    assert_eq!(u.entitlements, vec!["admin-console".to_string()]);
}

#[tokio::test]
async fn the_lambda_handler_reports_only_the_failed_records() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Lambda").group("Enterprise Admins", 1));
    let ok = stack.event("dsync.user.created", false);
    let ok_body = String::from_utf8_lossy(&ok.to_body()).into_owned();
    // One record fails for a passing reason: WorkOS rate-limits it for longer than the deadline.
    let failing_body = serde_json::json!({
        "id": "event_will_fail", "event": "dsync.group.updated", "created_at": "2026-11-25T10:00:00.000Z",
        "data": {"id": seeded.groups[0].id, "directory_id": seeded.directory_id}
    })
    .to_string();
    stack.sandbox.inject(route::GET_GROUP, 10, Fault::rate_limited(30));
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_value(serde_json::json!({
        "Records": [
            {"messageId": "m-ok", "receiptHandle": "r1", "body": ok_body, "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1764064800000"},
             "messageAttributes": {"source": {"stringValue": "webhook", "dataType": "String"}}, "eventSource": "aws:sqs"},
            {"messageId": "m-poison", "receiptHandle": "r2", "body": "{not json", "attributes": {}, "messageAttributes": {}},
            {"messageId": "m-fail", "receiptHandle": "r3", "body": failing_body, "attributes": {}, "messageAttributes": {}}
        ]
    }))
    .expect("an SQS event as Lambda delivers it");
    let p = stack.processor(ADMIN_RULE);
    let response = dsync::processor::lambda::handle(&p, event, deadline_in(Duration::from_secs(6))).await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["m-fail"]);
    let wire = serde_json::to_value(&response).expect("serialize");
    assert_eq!(
        wire,
        serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-fail"}]})
    );
}
