//! The runs that broke the processor (issue 8), each a deterministic test, and the processor's
//! contract with real parts: the WorkOS sandbox over HTTP, moto's DynamoDB through the SDK.
//! Interleavings that need exact control use the in-memory adapters (which pass the same
//! conformance suite as the DynamoDB ones) and a manual clock.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsync::adapters::memory::{MemClaims, MemQueue, MemState};
use dsync::clock::{Clock, EpochMillis, ManualClock, SystemClock};
use dsync::directory::{ApiError, CallBudget, DirGroup, DirInfo, DirUser, DirectoryApi, Listing, Page};
use dsync::engine::{Ran, Request};
use dsync::ports::claims::{ClaimRequest, ClaimResult, ClaimStore};
use dsync::ports::state::StateStore;
use dsync::processor::{Processor, ProcessorConfig, Record, RecordOutcome};
use dsync::rules::Rules;
use dsync::view::{Decision, EntitlementReader, Lookup};
use integration_tests::sim::{Crashy, Plan};
use integration_tests::stack::{config, ents, reconcile, record, Stack};
use workos_sandbox::direct::DirectApi;
use workos_sandbox::{route, Fault, SeedSpec, Store};

/// Another worker holds the directory's lease (for a minute) until released.
struct HeldLease {
    dir: String,
    fence: dsync::ports::state::Fence,
    version: u64,
}

async fn hold(stack: &Stack, dir: &str) -> HeldLease {
    let mut fence = stack.state().fence(dir).await.expect("fence").expect("exists");
    fence.value.owner = Some("another-worker".into());
    fence.value.lease_until = deadline_in(Duration::from_secs(60));
    let version = stack
        .state()
        .put_fence(dir, &fence.value, Some(fence.version))
        .await
        .expect("hold")
        .expect("cas");
    HeldLease {
        dir: dir.to_string(),
        fence: fence.value,
        version,
    }
}

impl HeldLease {
    async fn release(mut self, stack: &Stack) {
        self.fence.owner = None;
        stack
            .state()
            .put_fence(&self.dir, &self.fence, Some(self.version))
            .await
            .expect("release")
            .expect("cas");
    }
}

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

/// What the gate answers for `admin-console` (the feature the runs' rules grant).
async fn gate<S: StateStore>(reader: &EntitlementReader<S>, dir: &str, uid: &str) -> Decision {
    reader.user(dir, uid).await.expect("read").decide("admin-console")
}

fn org_rule(org: &str, group_name: &str, ent: &str) -> String {
    format!(r#"{{"organizations":{{"{org}":{{"by_group_name":{{"{group_name}":["{ent}"]}}}}}}}}"#)
}

async fn claim_status(stack: &Stack, event_id: &str) -> Option<String> {
    stack
        .dynamo
        .get_item()
        .table_name(&stack.events_table)
        .key("event_id", aws_sdk_dynamodb::types::AttributeValue::S(event_id.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("read claim")
        .item
        .and_then(|i| i.get("status").and_then(|s| s.as_s().ok()).cloned())
}

// ------------------------------------------------------------------------------------- run 1

/// Run 1: a 150-member group renamed away from a name rule; the processor is killed part-way
/// through the apply. Before: the retry saw the read's start stamp, completed the event as
/// "skipped" with 0 calls, and up to all 150 members kept the feature. Now: nothing marks the
/// group applied until every member is written, the gate answers `Unknown` meanwhile, and the
/// retry resumes from the job's checkpoint and completes the event only then.
#[tokio::test]
async fn run1_a_partial_apply_is_resumed_not_counted_as_done() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Partial").group("Platform Admins", 150));
    let dir = seeded.directory_id.clone();
    let members = seeded.groups[0].user_ids.clone();
    // A manual clock: the dead invocation's leases run out when the test says so, however
    // slow the machine is.
    let clock = ManualClock::at(SystemClock.now());
    let cfg = config(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    let p = Processor::new(
        stack.workos(),
        stack.claims(),
        stack.state(),
        stack.work_queue(),
        clock.clone(),
        cfg.clone(),
    );
    let deadline = || clock.now().saturating_add(Duration::from_secs(60));
    p.engine()
        .run(
            &dir,
            &[Request::Full { after: clock.now() }],
            &Default::default(),
            deadline(),
        )
        .await
        .expect("initial sync");
    for u in &members {
        assert_eq!(ents(&stack.user(&dir, u).await), ["admin-console"]);
    }

    stack
        .sandbox
        .rename_group(&seeded.groups[0].id, "Former Admins")
        .expect("rename");
    let ev = stack.event("dsync.group.updated", true);
    // Killed right after its second commit lands: the group's new name, then the first 99
    // members; the other 51 are not rewritten yet.
    let plan = Plan::on_call(ManualClock::default(), "commit", 2, true);
    let killed = Processor::new(
        stack.workos(),
        stack.claims(),
        Crashy {
            inner: stack.state(),
            plan: plan.clone(),
        },
        stack.work_queue(),
        clock.clone(),
        cfg,
    );
    let dead = async {
        while !plan.crashed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let batch = [record(&ev)];
    tokio::select! {
        out = killed.process_batch(&batch, deadline()) => panic!("the invocation must have been killed mid-apply: {out:?}"),
        _ = tokio::time::timeout(Duration::from_secs(60), dead) => {}
    }
    assert!(plan.crashed(), "the invocation must have been killed mid-apply");

    // Part-way: some members rewritten, some not; the gate grants none of them.
    let mut stale = 0;
    let reader = EntitlementReader::new(stack.state());
    for u in &members {
        if !stack.user(&dir, u).await.entitlements.is_empty() {
            stale += 1;
        }
        match reader.user(&dir, u).await.expect("read") {
            Lookup::Found(v) => assert_ne!(v.decide("admin-console"), Decision::Granted, "{u}: {v:?}"),
            other => panic!("{u}: {other:?}"),
        }
    }
    assert!(
        stale > 0 && stale < members.len(),
        "the kill must fall inside the apply ({stale} of {} not rewritten)",
        members.len()
    );
    assert_eq!(claim_status(&stack, &ev.id).await.as_deref(), Some("IN_PROGRESS"));

    // The redelivery, once the dead invocation's leases ran out.
    clock.advance(Duration::from_secs(120));
    let out = p.process_batch(&[record(&ev)], deadline()).await;
    assert_eq!(done_how(&out[0]), Some("applied"), "{out:?}");
    for u in &members {
        let rec = stack.user(&dir, u).await;
        assert!(rec.entitlements.is_empty(), "{u} kept {:?}", rec.entitlements);
        match reader.user(&dir, u).await.expect("read") {
            Lookup::Found(v) => assert_eq!(v.decide("admin-console"), Decision::Denied),
            other => panic!("{u}: {other:?}"),
        }
    }
    assert_eq!(claim_status(&stack, &ev.id).await.as_deref(), Some("COMPLETED"));
}

// ------------------------------------------------------------------------------------- run 2

/// A directory API that holds listings of one group's members, one hold per arming: each call
/// that takes a hold reads its page, signals `entered`, and waits for its own `release`.
#[derive(Clone)]
struct Holds {
    inner: DirectApi,
    group: String,
    armed: Arc<Mutex<std::collections::VecDeque<Option<Hold>>>>,
}

/// (entered, release) of one paused listing.
type Hold = (Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>);

impl Holds {
    /// The next members listing of the group pauses: (entered, release).
    fn arm(&self) -> Hold {
        let h = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Notify::new()),
        );
        self.armed.lock().expect("lock").push_back(Some(h.clone()));
        h
    }

    /// The next members listing of the group goes through (the one after it is what counts).
    fn pass(&self) {
        self.armed.lock().expect("lock").push_back(None);
    }
}

impl DirectoryApi for Holds {
    async fn get_directory(&self, d: &str, b: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        self.inner.get_directory(d, b).await
    }
    async fn get_user(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        self.inner.get_user(d, u, b).await
    }
    async fn get_group(&self, d: &str, g: &str, b: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.inner.get_group(d, g, b).await
    }
    async fn user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<Vec<DirGroup>>, ApiError> {
        self.inner.user_groups(d, u, b).await
    }
    async fn users_page(
        &self,
        d: &str,
        l: Listing<'_>,
        a: Option<&str>,
        b: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        let page = self.inner.users_page(d, l, a, b).await;
        let hold = if matches!(l, Listing::Group(g) if g == self.group) {
            self.armed.lock().expect("lock").pop_front().flatten()
        } else {
            None
        };
        if let Some((entered, release)) = hold {
            entered.notify_one();
            release.notified().await;
        }
        page
    }
    async fn groups_page(&self, d: &str, a: Option<&str>, b: &CallBudget) -> Result<Option<Page<DirGroup>>, ApiError> {
        self.inner.groups_page(d, a, b).await
    }
}

/// Run 2 ("a refused stamp is ignored"): an older, slower group read that saw the user in the
/// group must not re-create the membership after a newer user read found it gone. Shown to be
/// impossible: the slow reader's lease is taken over while it is paused, so its write is refused
/// as a whole (the fence); and each membership also keeps its own read time, so even a write
/// that got through could not bring back the older fact (see `model`'s tests).
#[tokio::test]
async fn run2_an_older_read_never_recreates_what_a_newer_read_removed() {
    let clock = ManualClock::at(EpochMillis(1_800_000_000_000));
    let truth = Arc::new(Mutex::new(Store::default()));
    let seeded = truth
        .lock()
        .expect("lock")
        .seed(&SeedSpec::new("Race").group("Platform Admins", 2), clock.now());
    let (dir, gid, uid) = (
        seeded.directory_id.clone(),
        seeded.groups[0].id.clone(),
        seeded.groups[0].user_ids[0].clone(),
    );
    let rules = Rules::parse(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console")).expect("rules");
    let state = MemState::new();
    let claims = MemClaims::new();
    let queue = MemQueue::new(clock.clone(), Duration::from_secs(30), 100);
    let held = Holds {
        inner: DirectApi::new(truth.clone(), 100),
        group: gid.clone(),
        armed: Arc::default(),
    };
    let mut cfg = ProcessorConfig::with_rules(rules);
    cfg.engine.chunk = Duration::from_secs(10);
    cfg.engine.lease_grace = Duration::from_secs(1);
    let p = Processor::new(held.clone(), claims, state.clone(), queue, clock.clone(), cfg);
    let deadline = || clock.now().saturating_add(Duration::from_secs(60));
    // Initial full read.
    p.engine()
        .run(
            &dir,
            &[Request::Full { after: clock.now() }],
            &Default::default(),
            deadline(),
        )
        .await
        .expect("initial");
    assert!(state.users(&dir, std::slice::from_ref(&uid)).await.expect("read")[0]
        .value
        .is_member(&gid));

    // Worker A re-reads the group (a group job) and is paused right after reading the page that
    // lists the user.
    let (entered, release) = held.arm();
    let group_request = [Request::Group(gid.clone())];
    let asked = dsync::engine::Asked::default();
    let a = p.engine().run(&dir, &group_request, &asked, deadline());
    tokio::pin!(a);
    tokio::select! {
        _ = &mut a => panic!("worker A finished without pausing"),
        _ = entered.notified() => {}
    }
    // Meanwhile the user leaves the group, and worker B applies that, once A's lease ran out.
    truth
        .lock()
        .expect("lock")
        .remove_member(&uid, &gid, clock.now())
        .expect("remove");
    clock.advance(Duration::from_secs(30));
    let b = p
        .engine()
        .run(&dir, &[Request::User(uid.clone())], &Default::default(), deadline())
        .await
        .expect("worker B");
    assert!(matches!(b, Ran::Worked(_)), "B must take over A's expired lease: {b:?}");
    let after_b = state.users(&dir, std::slice::from_ref(&uid)).await.expect("read")[0]
        .value
        .clone();
    assert!(!after_b.is_member(&gid) && after_b.entitlements.is_empty());

    // A goes on with its older page: refused, and the newer fact stands.
    release.notify_one();
    let ran_a = a.await.expect("worker A returns");
    assert!(
        matches!(ran_a, Ran::Failed { ref error, .. } if error.contains("lease")),
        "A's write must be fenced: {ran_a:?}"
    );
    let rec = state.users(&dir, std::slice::from_ref(&uid)).await.expect("read")[0]
        .value
        .clone();
    assert!(!rec.is_member(&gid), "an older read re-created the membership: {rec:?}");
    assert!(rec.entitlements.is_empty(), "{rec:?}");
}

/// Run 2, for group marks: a worker that lost its lease must not clear the "changing" mark a
/// newer worker set. A renames a group from one granting name to another (nothing to write for
/// its members) and pauses on the member list; the group is renamed again, away from every rule,
/// and B takes over and pauses part-way through carrying that. A then finishes its listing and
/// clears the group's mark. Before: A cleared up to its clock, B's newer mark with it, and the
/// members were `Granted` while B had not yet revoked them. Now a holder clears only the marks it
/// knows of; the members stay `Unknown` until B is done, then `Denied`.
#[tokio::test]
async fn run2c_a_stale_holder_never_clears_a_newer_group_mark() {
    let clock = ManualClock::at(EpochMillis(1_800_000_000_000));
    let truth = Arc::new(Mutex::new(Store::default()));
    let seeded = truth
        .lock()
        .expect("lock")
        .seed(&SeedSpec::new("Marks").group("Platform Admins", 2), clock.now());
    let (dir, gid, uid) = (
        seeded.directory_id.clone(),
        seeded.groups[0].id.clone(),
        seeded.groups[0].user_ids[0].clone(),
    );
    let org = &seeded.organization_id;
    let rules = Rules::parse(&format!(
        r#"{{"organizations":{{"{org}":{{"by_group_name":{{"Platform Admins":["admin-console"],"Ops":["admin-console"]}}}}}}}}"#
    ))
    .expect("rules");
    let state = MemState::new();
    let queue = MemQueue::new(clock.clone(), Duration::from_secs(30), 100);
    let api = Holds {
        inner: DirectApi::new(truth.clone(), 100),
        group: gid.clone(),
        armed: Arc::default(),
    };
    let mut cfg = ProcessorConfig::with_rules(rules);
    cfg.engine.chunk = Duration::from_secs(10);
    cfg.engine.lease_grace = Duration::from_secs(1);
    let p = Processor::new(api.clone(), MemClaims::new(), state.clone(), queue, clock.clone(), cfg);
    let deadline = || clock.now().saturating_add(Duration::from_secs(60));
    let reader = EntitlementReader::new(state.clone());
    p.engine()
        .run(
            &dir,
            &[Request::Full { after: clock.now() }],
            &Default::default(),
            deadline(),
        )
        .await
        .expect("initial");
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Granted);

    // A: a reconcile reads "Platform Admins" → "Ops" (still granted), marks the group changing,
    // and pauses on its member list.
    clock.advance(Duration::from_secs(1));
    truth
        .lock()
        .expect("lock")
        .rename_group(&gid, "Ops", clock.now())
        .expect("rename");
    let (a_in, a_go) = api.arm();
    let full = [Request::Full { after: clock.now() }];
    let asked = dsync::engine::Asked::default();
    let a = p.engine().run(&dir, &full, &asked, deadline());
    tokio::pin!(a);
    tokio::select! {
        _ = &mut a => panic!("A finished without pausing"),
        _ = a_in.notified() => {}
    }

    // "Ops" → "Staff" (no rule). Once A's lease ran out, B takes over: it finishes A's run
    // (recomputing the members for "Ops"), then reads the rename in a group job, marks the group
    // changing and pauses while carrying it to the members.
    clock.advance(Duration::from_secs(30));
    truth
        .lock()
        .expect("lock")
        .rename_group(&gid, "Staff", clock.now())
        .expect("rename");
    api.pass();
    let (b_in, b_go) = api.arm();
    let group_request = [Request::Group(gid.clone())];
    let b = async {
        // B's chunks until the one that paused on the member list has returned (the first may
        // finish A's run).
        loop {
            let r = p.engine().run(&dir, &group_request, &asked, deadline()).await;
            if api.armed.lock().expect("lock").is_empty() {
                return r;
            }
        }
    };
    tokio::pin!(b);
    tokio::select! {
        _ = &mut a => panic!("A finished while paused"),
        _ = &mut b => panic!("B finished without pausing"),
        _ = b_in.notified() => {}
    }
    assert_eq!(
        gate(&reader, &dir, &uid).await,
        Decision::Unknown,
        "B is carrying the rename away"
    );

    // A goes on: its last member page needs no write, so nothing fences it before it clears.
    a_go.notify_one();
    let ran_a = tokio::select! {
        r = &mut a => r,
        _ = &mut b => panic!("B finished while paused"),
    };
    assert!(
        matches!(ran_a, Ok(Ran::Failed { .. })),
        "A's run ends fenced: {ran_a:?}"
    );
    let ctl = state.ctl(&dir).await.expect("ctl");
    assert!(
        ctl.propagating.contains_key(&gid),
        "a stale holder cleared a newer holder's mark: {ctl:?}"
    );
    assert_eq!(
        gate(&reader, &dir, &uid).await,
        Decision::Unknown,
        "the gate trusted the members while the rename away was still being applied"
    );

    // B finishes: revoked, and the mark is gone.
    b_go.notify_one();
    b.await.expect("B returns");
    for _ in 0..5 {
        if state.ctl(&dir).await.expect("ctl").propagating.is_empty() {
            break;
        }
        p.engine()
            .run(&dir, &[], &Default::default(), deadline())
            .await
            .expect("continue");
    }
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Denied);
}

// ------------------------------------------------------------------------------------- run 3

/// A WorkOS that still answers for users after their directory was deleted.
#[derive(Clone)]
struct Lagging {
    inner: dsync::adapters::workos::WorkosClient,
    stale_users: Arc<Mutex<Vec<DirUser>>>,
    stale_groups: Arc<Mutex<Vec<DirGroup>>>,
}

impl DirectoryApi for Lagging {
    async fn get_directory(&self, d: &str, b: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        self.inner.get_directory(d, b).await
    }
    async fn get_user(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        let stale = self
            .stale_users
            .lock()
            .expect("lock")
            .iter()
            .find(|x| x.id == u)
            .cloned();
        match stale {
            Some(s) => Ok(Some(s)),
            None => self.inner.get_user(d, u, b).await,
        }
    }
    async fn get_group(&self, d: &str, g: &str, b: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.inner.get_group(d, g, b).await
    }
    async fn user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<Vec<DirGroup>>, ApiError> {
        if self.stale_users.lock().expect("lock").iter().any(|x| x.id == u) {
            return Ok(Some(self.stale_groups.lock().expect("lock").clone()));
        }
        self.inner.user_groups(d, u, b).await
    }
    async fn users_page(
        &self,
        d: &str,
        l: Listing<'_>,
        a: Option<&str>,
        b: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        self.inner.users_page(d, l, a, b).await
    }
    async fn groups_page(&self, d: &str, a: Option<&str>, b: &CallBudget) -> Result<Option<Page<DirGroup>>, ApiError> {
        self.inner.groups_page(d, a, b).await
    }
}

/// Run 3: a `dsync.user.updated` created just before `dsync.deleted` and processed after it,
/// while WorkOS still answers for the user. Before: the user came back with two entitlements in
/// the purged directory. Now: the tombstone stops every write, the event completes without one,
/// and the gate has nobody in the directory.
#[tokio::test]
async fn run3_a_deleted_directory_never_comes_back() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Gone").group("Platform Admins", 2).group("Billing", 2));
    let dir = seeded.directory_id.clone();
    let uid = seeded.groups[0].user_ids[0].clone();
    stack.sandbox.add_member(&uid, &seeded.groups[1].id).expect("add");
    let rules = format!(
        r#"{{"organizations":{{"{}":{{"by_group_name":{{"Platform Admins":["admin-console"],"Billing":["billing"]}}}}}}}}"#,
        seeded.organization_id
    );
    let workos = stack.workos();
    let budget = CallBudget::until(minute());
    let lagging = Lagging {
        stale_users: Arc::new(Mutex::new(vec![workos
            .get_user(&dir, &uid, &budget)
            .await
            .expect("get")
            .expect("user")])),
        stale_groups: Arc::new(Mutex::new(
            workos
                .user_groups(&dir, &uid, &budget)
                .await
                .expect("groups")
                .expect("some"),
        )),
        inner: workos,
    };
    let p = stack.processor_with(lagging, config(&rules));
    reconcile(&p, &dir).await;
    assert_eq!(ents(&stack.user(&dir, &uid).await), ["admin-console", "billing"]);

    stack
        .sandbox
        .update_user(
            &uid,
            workos_sandbox::UserUpdate {
                first_name: Some("Late".into()),
                ..Default::default()
            },
        )
        .expect("update");
    let late = stack.event("dsync.user.updated", true);
    stack.sandbox.delete_directory(&dir).expect("delete directory");
    let deleted = stack.event("dsync.deleted", true);

    let out = p.process_batch(&[record(&deleted)], minute()).await;
    assert!(done_how(&out[0]).is_some(), "{out:?}");
    // Purge to the end.
    for _ in 0..20 {
        if stack
            .state()
            .fence(&dir)
            .await
            .expect("fence")
            .is_some_and(|f| f.value.job.is_none())
        {
            break;
        }
        p.engine()
            .run(&dir, &[], &Default::default(), minute())
            .await
            .expect("purge");
    }
    let out = p.process_batch(&[record(&late)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("directory_deleted"), "{out:?}");
    assert!(
        stack
            .state()
            .users_page(&dir, None, 10)
            .await
            .expect("users")
            .items
            .is_empty(),
        "nothing is stored for the deleted directory"
    );
    let reader = EntitlementReader::new(stack.state());
    assert_eq!(reader.user(&dir, &uid).await.expect("read"), Lookup::NotFound);
    assert_eq!(reader.user_by_id(&uid).await.expect("read"), Lookup::NotFound);
    assert!(reader.directory(&dir).await.expect("read").is_empty());
    // Even a reconcile request (an operator, a DLQ redrive) writes nothing.
    let ran = p
        .engine()
        .run(
            &dir,
            &[
                Request::Full {
                    after: SystemClock.now(),
                },
                Request::User(uid.clone()),
            ],
            &Default::default(),
            minute(),
        )
        .await
        .expect("run");
    assert_eq!(ran, Ran::Deleted);
    assert!(stack
        .state()
        .users_page(&dir, None, 10)
        .await
        .expect("users")
        .items
        .is_empty());
}

// ------------------------------------------------------------------------------------- run 4

/// Run 4: a group-name rule crossed tenants (any customer could name a group "Platform Admins").
/// Now a name rule is scoped to its organization, read from WorkOS, never from the payload.
#[tokio::test]
async fn run4_a_group_name_rule_stays_in_its_organization() {
    let stack = Stack::new().await;
    let acme = stack
        .sandbox
        .seed_directory(SeedSpec::new("Acme").group("Platform Admins", 2));
    let evil = stack
        .sandbox
        .seed_directory(SeedSpec::new("Evil").group("Platform Admins", 2));
    let p = stack.processor(&org_rule(&acme.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &acme.directory_id).await;
    reconcile(&p, &evil.directory_id).await;
    for u in &acme.groups[0].user_ids {
        assert_eq!(ents(&stack.user(&acme.directory_id, u).await), ["admin-console"]);
    }
    for u in &evil.groups[0].user_ids {
        assert!(stack.user(&evil.directory_id, u).await.entitlements.is_empty(), "{u}");
    }
    // A payload claiming Acme's organization changes nothing: the organization comes from
    // GET /directories/{id}.
    let forged = serde_json::json!({
        "object": "event", "id": "event_forged_org", "event": "dsync.group.updated",
        "data": { "object": "directory_group", "id": evil.groups[0].id, "directory_id": evil.directory_id,
                  "organization_id": acme.organization_id, "name": "Platform Admins" },
        "created_at": dsync::event::format_created_at(SystemClock.now()),
    });
    let rec = Record {
        message_id: "forged".into(),
        body: Some(forged.to_string()),
        source: "webhook".into(),
        received_at: Some(SystemClock.now()),
        receive_count: 1,
        receipt: None,
    };
    let out = p.process_batch(&[rec], minute()).await;
    assert!(done_how(&out[0]).is_some(), "{out:?}");
    for u in &evil.groups[0].user_ids {
        assert!(stack.user(&evil.directory_id, u).await.entitlements.is_empty(), "{u}");
    }
    assert!(
        stack.sandbox.calls(route::GET_DIRECTORY) >= 2,
        "the organization is read from WorkOS"
    );
}

// ------------------------------------------------------------------------------------- run 5

/// Run 5: the gate ignored `current`. Now it answers `Unknown` (never `Granted`) while an event
/// about the user is received and not applied, and reads strongly consistently.
#[tokio::test]
async fn run5_the_gate_fails_closed_while_an_event_is_pending() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Gate").group("Platform Admins", 1));
    let dir = seeded.directory_id.clone();
    let uid = seeded.groups[0].user_ids[0].clone();
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &dir).await;
    let reader = EntitlementReader::new(stack.state());
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Granted);

    // The user is deactivated; its event is received while another worker holds the directory.
    stack
        .sandbox
        .set_user_state(&uid, workos_sandbox::UserState::Inactive)
        .expect("deactivate");
    let ev = stack.event("dsync.user.updated", true);
    let held = hold(&stack, &dir).await;
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert!(
        matches!(out[0], RecordOutcome::Retry { .. }),
        "handed over, not applied: {out:?}"
    );
    let seen = reader.user(&dir, &uid).await.expect("read");
    assert_eq!(seen.decide("admin-console"), Decision::Unknown, "{seen:?}");
    assert!(!seen.allows("admin-console"));

    // The holder lets go; the event comes back and is applied: now denied.
    held.release(&stack).await;
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("applied"), "{out:?}");
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Denied);
}

/// Run 5, for groups: a group event received while another worker holds the directory makes the
/// group's members `Unknown` until it is applied (a rename away from a rule must not keep granting).
#[tokio::test]
async fn run5c_members_of_a_group_with_an_event_pending_are_unknown() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Gate groups").group("Platform Admins", 2));
    let dir = seeded.directory_id.clone();
    let uid = seeded.groups[0].user_ids[0].clone();
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &dir).await;
    let reader = EntitlementReader::new(stack.state());
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Granted);
    stack
        .sandbox
        .rename_group(&seeded.groups[0].id, "Former Admins")
        .expect("rename");
    let ev = stack.event("dsync.group.updated", true);
    let held = hold(&stack, &dir).await;
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert!(matches!(out[0], RecordOutcome::Retry { .. }), "handed over: {out:?}");
    let seen = reader.user(&dir, &uid).await.expect("read");
    assert_eq!(seen.decide("admin-console"), Decision::Unknown, "{seen:?}");

    held.release(&stack).await;
    // The holder's group job (one chunk may not finish it: run until the event is applied).
    let mut how = None;
    for _ in 0..10 {
        let out = p.process_batch(&[record(&ev)], minute()).await;
        how = done_how(&out[0]).map(str::to_string);
        if how.is_some() {
            break;
        }
    }
    assert!(how.is_some(), "applied in the end");
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Denied);
}

/// Run 5, for many groups: more group events at once than the control record keeps one by one
/// (here over a cap of 1) while another worker holds the directory. Before: they were dropped in
/// favour of a full read, and a group renamed away from a rule kept granting its members until
/// that read listed it. Now the overflow is recorded and every group member is `Unknown` until
/// the full read is applied.
#[tokio::test]
async fn run5d_group_events_beyond_the_cap_keep_members_unknown() {
    let stack = Stack::new().await;
    let seeded = stack.sandbox.seed_directory(
        SeedSpec::new("Many groups")
            .group("Platform Admins", 2)
            .group("Engineering", 2),
    );
    let dir = seeded.directory_id.clone();
    let uid = seeded.groups[0].user_ids[0].clone();
    let mut cfg = config(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    cfg.engine.max_pending_groups = 1;
    // The full read starts as soon as it is asked for (each redelivery would otherwise put it
    // off, up to a minute).
    cfg.engine.debounce_max = Duration::ZERO;
    let p = stack.processor_with(stack.workos(), cfg);
    reconcile(&p, &dir).await;
    let reader = EntitlementReader::new(stack.state());
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Granted);
    stack
        .sandbox
        .rename_group(&seeded.groups[0].id, "Former Admins")
        .expect("rename");
    stack
        .sandbox
        .rename_group(&seeded.groups[1].id, "Platform Engineering")
        .expect("rename");
    let batch: Vec<Record> = stack
        .sandbox
        .events()
        .iter()
        .filter(|e| e.event == "dsync.group.updated")
        .map(record)
        .collect();
    assert_eq!(batch.len(), 2);
    let held = hold(&stack, &dir).await;
    let out = p.process_batch(&batch, minute()).await;
    assert!(
        out.iter().all(|o| matches!(o, RecordOutcome::Retry { .. })),
        "handed over: {out:?}"
    );
    let ctl = stack.state().ctl(&dir).await.expect("ctl");
    assert!(ctl.pending_groups.is_empty() && ctl.groups_overflowing(), "{ctl:?}");
    let seen = reader.user(&dir, &uid).await.expect("read");
    assert_eq!(
        seen.decide("admin-console"),
        Decision::Unknown,
        "a member of a group renamed away kept the feature: {seen:?}"
    );

    held.release(&stack).await;
    let mut done = 0;
    for _ in 0..20 {
        let out = p.process_batch(&batch, minute()).await;
        done = out.iter().filter(|o| done_how(o).is_some()).count();
        if done == batch.len() {
            break;
        }
    }
    assert_eq!(done, batch.len(), "applied in the end");
    assert!(!stack.state().ctl(&dir).await.expect("ctl").groups_overflowing());
    assert_eq!(gate(&reader, &dir, &uid).await, Decision::Denied);
}

/// Run 5, at scale: users whose events are too many for one re-read each are left to a full
/// read of the directory. Until that read is applied they stay `Unknown`: handing their work to
/// the reconcile must not make the gate trust what is stored (deactivated users still granted).
#[tokio::test]
async fn run5b_users_left_to_a_reconcile_stay_unknown_until_it_is_applied() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Burst gate").group("Platform Admins", 8));
    let dir = seeded.directory_id.clone();
    let rules = org_rule(&seeded.organization_id, "Platform Admins", "admin-console");
    let mut cfg = config(&rules);
    cfg.engine.skip_margin = Duration::from_millis(800);
    let p = stack.processor_with(stack.workos(), cfg);
    reconcile(&p, &dir).await;
    let reader = EntitlementReader::new(stack.state());
    let users = &seeded.groups[0].user_ids;
    for u in users {
        stack
            .sandbox
            .set_user_state(u, workos_sandbox::UserState::Inactive)
            .expect("deactivate");
    }
    let events: Vec<Record> = stack
        .sandbox
        .events()
        .iter()
        .filter(|e| e.event == "dsync.user.updated")
        .map(record)
        .collect();
    assert_eq!(events.len(), users.len());
    // Eight user re-reads cost more than one read of this small directory: a reconcile is asked
    // for, after the events' margin.
    let out = p.process_batch(&events, minute()).await;
    assert!(out.iter().all(|o| o.is_failure()), "put back until applied: {out:?}");
    for u in users {
        let seen = reader.user(&dir, u).await.expect("read");
        assert_eq!(seen.decide("admin-console"), Decision::Unknown, "{u}: {seen:?}");
    }
    // The reconcile runs once due, and applies every deactivation.
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.engine()
            .run(&dir, &[], &Default::default(), minute())
            .await
            .expect("continue");
        let ctl = stack.state().ctl(&dir).await.expect("ctl");
        if ctl
            .full_applied_at
            .is_some_and(|t| events.iter().all(|e| e.received_at.is_some_and(|r| t > r)))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "reconcile not applied: {ctl:?}"
        );
    }
    for u in users {
        let seen = reader.user(&dir, u).await.expect("read");
        assert_eq!(seen.decide("admin-console"), Decision::Denied, "{u}: {seen:?}");
    }
    assert!(
        stack.state().ctl(&dir).await.expect("ctl").pending_users.is_empty(),
        "the reconcile's users are drained"
    );
    let out = p.process_batch(&events, minute()).await;
    assert!(out.iter().all(|o| done_how(o) == Some("covered")), "{out:?}");
}

// ------------------------------------------------------------------------------------- run 6

/// A directory API that deletes a group in the sandbox right after the groups were listed.
#[derive(Clone)]
struct DeletesMidway {
    inner: dsync::adapters::workos::WorkosClient,
    sandbox: Arc<Mutex<Store>>,
    group: String,
}

impl DirectoryApi for DeletesMidway {
    async fn get_directory(&self, d: &str, b: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        self.inner.get_directory(d, b).await
    }
    async fn get_user(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        self.inner.get_user(d, u, b).await
    }
    async fn get_group(&self, d: &str, g: &str, b: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.inner.get_group(d, g, b).await
    }
    async fn user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<Vec<DirGroup>>, ApiError> {
        self.inner.user_groups(d, u, b).await
    }
    async fn users_page(
        &self,
        d: &str,
        l: Listing<'_>,
        a: Option<&str>,
        b: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        self.inner.users_page(d, l, a, b).await
    }
    async fn groups_page(&self, d: &str, a: Option<&str>, b: &CallBudget) -> Result<Option<Page<DirGroup>>, ApiError> {
        let page = self.inner.groups_page(d, a, b).await;
        let _ = self
            .sandbox
            .lock()
            .expect("lock")
            .delete_group(&self.group, SystemClock.now());
        page
    }
}

/// Run 6: a group deleted while a reconcile lists its members answered 404 and failed the whole
/// run, forever. Now a 404 on a sub-list means the group is gone: the run finishes and takes the
/// group away from its members.
#[tokio::test]
async fn run6_a_404_on_a_member_list_means_gone_and_the_reconcile_finishes() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Vanish").group("Platform Admins", 3).group("Staff", 2));
    let dir = seeded.directory_id.clone();
    let api = DeletesMidway {
        inner: stack.workos(),
        sandbox: stack.sandbox.store(),
        group: seeded.groups[0].id.clone(),
    };
    let p = stack.processor_with(
        api,
        config(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console")),
    );
    reconcile(&p, &dir).await;
    assert!(
        stack.sandbox.calls_with_status(route::LIST_USERS, 404) >= 1,
        "the member list did 404"
    );
    for u in &seeded.groups[0].user_ids {
        let rec = stack.user(&dir, u).await;
        assert!(
            rec.entitlements.is_empty() && rec.member_of().count() == 0,
            "{u}: {rec:?}"
        );
    }
    let ctl = stack.state().ctl(&dir).await.expect("ctl");
    assert!(ctl.full_applied_at.is_some(), "the reconcile finished");
    let gone = stack.state().groups(&dir).await.expect("groups");
    assert!(gone
        .iter()
        .any(|g| g.value.group_id == seeded.groups[0].id && g.value.is_deleted()));
}

// ------------------------------------------------------------------------------------- run 7

/// Run 7: a signed body with characters SQS refuses was answered 400 and lost. The receiver now
/// queues it base64-encoded (tested in `receiver.rs`); here the processor reads it back.
#[tokio::test]
async fn run7_a_base64_queued_event_is_processed_like_any_other() {
    use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
    use base64::Engine as _;
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("B64").group("Platform Admins", 1));
    let dir = seeded.directory_id.clone();
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &dir).await;
    let uid = &seeded.groups[0].user_ids[0];
    stack
        .sandbox
        .set_user_state(uid, workos_sandbox::UserState::Inactive)
        .expect("deactivate");
    let ev = stack.event("dsync.user.updated", true);
    let mut m = SqsMessage::default();
    m.message_id = Some("b64".into());
    m.body = Some(base64::engine::general_purpose::STANDARD.encode(ev.to_body()));
    let mut attr = SqsMessageAttribute::default();
    attr.string_value = Some("base64".into());
    attr.data_type = Some("String".into());
    m.message_attributes
        .insert(dsync::queue::ATTR_BODY_ENCODING.into(), attr);
    m.attributes
        .insert("SentTimestamp".into(), SystemClock.now().0.to_string());
    let mut event = SqsEvent::default();
    event.records = vec![m.clone()];
    let resp = dsync::processor::lambda::handle(&p, event, minute()).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    assert_eq!(claim_status(&stack, &ev.id).await.as_deref(), Some("COMPLETED"));
    assert!(stack.user(&dir, uid).await.entitlements.is_empty());
    // Undecodable base64 is a message that can never be processed, not an event.
    m.body = Some("not base64 !".into());
    m.message_id = Some("bad".into());
    assert!(dsync::processor::lambda::record_of(&m).body.is_none());
}

// ------------------------------------------------------------------------------------- run 8

/// A directory API that places a user, and one of its groups, in another directory.
#[derive(Clone)]
struct Foreign {
    inner: dsync::adapters::workos::WorkosClient,
    user: String,
}

impl DirectoryApi for Foreign {
    async fn get_directory(&self, d: &str, b: &CallBudget) -> Result<Option<DirInfo>, ApiError> {
        self.inner.get_directory(d, b).await
    }
    async fn get_user(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<DirUser>, ApiError> {
        let mut r = self.inner.get_user(d, u, b).await?;
        if u == self.user {
            if let Some(x) = r.as_mut() {
                x.directory_id = "directory_someone_else".into();
            }
        }
        Ok(r)
    }
    async fn get_group(&self, d: &str, g: &str, b: &CallBudget) -> Result<Option<DirGroup>, ApiError> {
        self.inner.get_group(d, g, b).await
    }
    async fn user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Option<Vec<DirGroup>>, ApiError> {
        let mut r = self.inner.user_groups(d, u, b).await?;
        if let Some(gs) = r.as_mut() {
            gs.push(DirGroup {
                id: "directory_group_foreign".into(),
                directory_id: "directory_someone_else".into(),
                name: "Platform Admins".into(),
                updated_at: None,
            });
        }
        Ok(r)
    }
    async fn users_page(
        &self,
        d: &str,
        l: Listing<'_>,
        a: Option<&str>,
        b: &CallBudget,
    ) -> Result<Option<Page<DirUser>>, ApiError> {
        self.inner.users_page(d, l, a, b).await
    }
    async fn groups_page(&self, d: &str, a: Option<&str>, b: &CallBudget) -> Result<Option<Page<DirGroup>>, ApiError> {
        self.inner.groups_page(d, a, b).await
    }
}

/// Run 8: fetched objects were written without checking they belong to the event's directory.
#[tokio::test]
async fn run8_objects_of_another_directory_are_never_written() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Mine").group("Platform Admins", 1).group("Staff", 1));
    let dir = seeded.directory_id.clone();
    let (mover, stayer) = (
        seeded.groups[0].user_ids[0].clone(),
        seeded.groups[1].user_ids[0].clone(),
    );
    let p = stack.processor_with(
        Foreign {
            inner: stack.workos(),
            user: mover.clone(),
        },
        config(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console")),
    );
    reconcile(&p, &dir).await;
    for u in [&mover, &stayer] {
        let out = p
            .engine()
            .run(&dir, &[Request::User(u.clone())], &Default::default(), minute())
            .await
            .expect("refresh");
        assert!(matches!(out, Ran::Worked(_)));
    }
    let m = stack.user(&dir, &mover).await;
    assert!(
        m.entitlements.is_empty(),
        "a user WorkOS places elsewhere gets nothing here: {m:?}"
    );
    let s = stack.user(&dir, &stayer).await;
    assert!(
        !s.is_member("directory_group_foreign") && s.entitlements.is_empty(),
        "{s:?}"
    );
    assert!(stack
        .state()
        .groups(&dir)
        .await
        .expect("groups")
        .iter()
        .all(|g| g.value.group_id != "directory_group_foreign"));
}

// ------------------------------------------------------------------------------------- run 9

/// Run 9: the API key sat in a plain environment variable. It is now read from Secrets Manager
/// and re-read when WorkOS refuses it, so a rotation needs no restart.
#[tokio::test]
async fn run9_a_rotated_api_key_is_picked_up_without_a_restart() {
    use dsync::adapters::workos::{WorkosClient, WorkosConfig};
    use dsync::secrets::{CachedSecret, MemorySecret};
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Rotate").group("Platform Admins", 1));
    let secret = MemorySecret::with(integration_tests::stack::API_KEY);
    let clock = ManualClock::at(SystemClock.now());
    let key = Arc::new(CachedSecret::load(secret.clone(), clock.clone()).await.expect("load"));
    let cfg = WorkosConfig {
        base_url: stack.sandbox.base_url(),
        ..WorkosConfig::default()
    };
    let api = WorkosClient::with_key(cfg, SystemClock, dsync::ports::budget::Unlimited, key).expect("client");
    let b = CallBudget::until(minute());
    assert!(api
        .get_directory(&seeded.directory_id, &b)
        .await
        .expect("read")
        .is_some());
    // The key is rotated in WorkOS and in Secrets Manager.
    stack.sandbox.set_api_key("sk_test_rotated");
    secret.set("sk_test_rotated");
    clock.advance(Duration::from_secs(61));
    stack.sandbox.reset_calls();
    assert!(api
        .get_directory(&seeded.directory_id, &b)
        .await
        .expect("read after rotation")
        .is_some());
    assert_eq!(stack.sandbox.calls_with_status(route::GET_DIRECTORY, 401), 1);
    assert_eq!(stack.sandbox.calls_with_status(route::GET_DIRECTORY, 200), 1);
    assert_eq!(secret.reads(), 2, "read at init, re-read once on the 401");
}

// ------------------------------------------------------------------------------- the contract

#[tokio::test]
async fn duplicates_cost_one_refetch() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Dup").group("Platform Admins", 3));
    let dir = seeded.directory_id.clone();
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &dir).await;
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
    stack.sandbox.reset_calls();
    let out = p.process_batch(&[record(&ev), record(&ev)], minute()).await;
    let later = p.process_batch(&[record(&ev)], minute()).await;
    let all: Vec<&RecordOutcome> = out.iter().chain(later.iter()).collect();
    assert_eq!(
        all.iter().filter(|o| done_how(o) == Some("applied")).count(),
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
    assert_eq!(ents(&stack.user(&dir, uid).await), ["admin-console"]);
}

#[tokio::test]
async fn rate_limited_then_applied_after_the_wait() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("RL").group("Platform Admins", 1));
    let dir = seeded.directory_id.clone();
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &dir).await;
    let uid = &seeded.groups[0].user_ids[0];
    stack
        .sandbox
        .set_user_state(uid, workos_sandbox::UserState::Inactive)
        .expect("deactivate");
    let ev = stack.event("dsync.user.updated", true);
    stack.sandbox.reset_calls();
    stack.sandbox.inject(route::GET_USER, 1, Fault::rate_limited(1));
    let started = Instant::now();
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("applied"), "{out:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(stack.sandbox.calls_with_status(route::GET_USER, 429), 1);
    assert!(stack.user(&dir, uid).await.entitlements.is_empty());
}

#[tokio::test]
async fn workos_down_puts_the_event_back_and_the_retry_applies_it() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Down").group("Platform Admins", 1));
    let dir = seeded.directory_id.clone();
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &dir).await;
    let uid = &seeded.groups[0].user_ids[0];
    stack
        .sandbox
        .set_user_state(uid, workos_sandbox::UserState::Inactive)
        .expect("deactivate");
    let ev = stack.event("dsync.user.updated", true);
    stack.sandbox.set_outage(true);
    let deadline = deadline_in(Duration::from_secs(8));
    let out = p.process_batch(&[record(&ev)], deadline).await;
    assert!(out[0].is_failure(), "{out:?}");
    let attempts = stack.sandbox.calls_with_status(route::GET_USER, 503);
    assert!((1..=4).contains(&attempts), "{attempts} attempts");
    assert!(SystemClock.now() < deadline.saturating_add(Duration::from_secs(3)));
    assert_eq!(claim_status(&stack, &ev.id).await, None, "the claim was released");
    assert_eq!(
        ents(&stack.user(&dir, uid).await),
        ["admin-console"],
        "nothing half-applied"
    );

    stack.sandbox.set_outage(false);
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert_eq!(done_how(&out[0]), Some("applied"), "{out:?}");
    assert!(stack.user(&dir, uid).await.entitlements.is_empty());
}

#[tokio::test]
async fn a_crashed_runs_claim_is_taken_over_once_its_lease_ends() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Crash").group("Platform Admins", 1));
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    reconcile(&p, &seeded.directory_id).await;
    let ev = stack.event("dsync.user.created", false);
    let now = SystemClock.now();
    let crashed = ClaimRequest {
        event_id: &ev.id,
        event_type: &ev.event,
        source: "webhook",
        token: "crashed-run",
        now,
        lease_until: now.saturating_add(Duration::from_secs(3)),
        expires_at: now.to_seconds().saturating_add(Duration::from_secs(86_400)),
        received_at: None,
    };
    assert_eq!(
        stack.claims().claim(&crashed).await.expect("claim"),
        ClaimResult::Acquired
    );
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert!(
        out[0].is_failure(),
        "a live lease makes the message come back later: {out:?}"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert!(done_how(&out[0]).is_some(), "{out:?}");
    let out = p.process_batch(&[record(&ev)], minute()).await;
    assert!(matches!(out[0], RecordOutcome::Duplicate { .. }), "{out:?}");
}

#[tokio::test]
async fn poison_messages_are_recorded_and_not_retried() {
    let stack = Stack::new().await;
    let p = stack.processor("{}");
    let bodies = [
        None,
        Some("not json"),
        Some("[]"),
        Some(r#"{"event":"dsync.user.created"}"#),
        Some(r#"{"id":"e1","event":"dsync.user.updated","data":{"id":"u"}}"#),
        Some(r#"{"object":"dsync_continuation"}"#),
    ];
    let records: Vec<Record> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Record {
            message_id: format!("poison-{i}"),
            body: b.map(str::to_string),
            source: "webhook".into(),
            ..Default::default()
        })
        .collect();
    let out = p.process_batch(&records, minute()).await;
    assert!(
        out.iter().all(|o| matches!(o, RecordOutcome::Invalid { .. })),
        "{out:?}"
    );
}

#[tokio::test]
async fn an_event_already_reflected_is_completed_without_a_call() {
    let stack = Stack::new().await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Covered").group("Platform Admins", 2));
    let ev = stack.event("dsync.user.created", false);
    let p = stack.processor(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    // A full read that began after the event was queued reflects it.
    let queued = record(&ev);
    tokio::time::sleep(Duration::from_millis(20)).await;
    reconcile(&p, &seeded.directory_id).await;
    stack.sandbox.reset_calls();
    let out = p.process_batch(&[queued], minute()).await;
    assert_eq!(done_how(&out[0]), Some("covered"), "{out:?}");
    assert_eq!(stack.sandbox.call_stats().iter().map(|c| c.count).sum::<u64>(), 0);
}

/// An initial sync: one event per user and membership, and every one of them is reflected by
/// one directory-wide read whose cost is list pages, not a re-fetch per user.
#[tokio::test]
async fn an_initial_sync_costs_list_pages_not_per_user_gets() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let stack = Stack::with_sandbox(workos_sandbox::SandboxConfig {
        rate_limit_per_sec: None,
        ..workos_sandbox::SandboxConfig::new(integration_tests::stack::API_KEY)
    })
    .await;
    let seeded = stack
        .sandbox
        .seed_directory(SeedSpec::new("Init").group("Platform Admins", 250));
    let events: Vec<Record> = stack.sandbox.events().iter().map(record).collect();
    let mut cfg = config(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console"));
    cfg.engine.skip_margin = Duration::from_millis(50);
    let p = stack.processor_with(stack.workos(), cfg);
    stack.sandbox.reset_calls();
    let mut left: Vec<Record> = events;
    for _ in 0..30 {
        let mut next = Vec::new();
        for chunk in left.chunks(10) {
            let out = p.process_batch(chunk, minute()).await;
            next.extend(
                chunk
                    .iter()
                    .zip(&out)
                    .filter(|(_, o)| o.is_failure())
                    .map(|(r, _)| r.clone()),
            );
        }
        if next.is_empty() {
            break;
        }
        left = next;
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.engine()
            .run(&seeded.directory_id, &[], &Default::default(), minute())
            .await
            .expect("continue");
    }
    let total: u64 = stack.sandbox.call_stats().iter().map(|c| c.count).sum();
    assert_eq!(stack.sandbox.calls(route::GET_USER), 0, "no per-user re-fetch");
    assert!(total <= 12, "{total} calls: {:?}", stack.sandbox.call_stats());
    let granted = BTreeSet::from(["admin-console".to_string()]);
    for u in &seeded.groups[0].user_ids {
        assert_eq!(stack.user(&seeded.directory_id, u).await.entitlements, granted);
    }
}

/// Run 2, second half: a reconcile's sweep removes what its listing did not see, but only facts
/// older than that listing. A user refresh that added the membership after the listing began
/// (an event applied between the listing and the sweep) must survive the sweep.
#[tokio::test]
async fn run2b_a_sweep_never_undoes_a_newer_read() {
    use dsync::model::{fingerprint, GroupRecord, UserRecord};
    use dsync::ports::state::{CtlChange, Fence, Job, JobKind, Phase, RunStats, SeenPage, Write};
    let clock = ManualClock::at(EpochMillis(1_800_000_000_000));
    let t = |ms: u64| EpochMillis(1_800_000_000_000 + ms);
    let truth = Arc::new(Mutex::new(Store::default()));
    let seeded = truth.lock().expect("lock").seed(
        &SeedSpec::new("Sweep").group("Platform Admins", 1).extra_users(1),
        clock.now(),
    );
    let (dir, gid) = (seeded.directory_id.clone(), seeded.groups[0].id.clone());
    let (listed, joined) = (seeded.groups[0].user_ids[0].clone(), seeded.extra_user_ids[0].clone());
    truth
        .lock()
        .expect("lock")
        .add_member(&joined, &gid, t(50))
        .expect("join");
    let state = MemState::new();
    let salt = "00aa";
    // A reconcile in its sweep: the group's member listing began at t(10) and saw `listed` only.
    let job = Job {
        id: "r1".into(),
        kind: JobKind::Reconcile,
        started_at: t(0).0,
        phase: Phase::SweepMembers {
            group_after: None,
            after: None,
        },
        salt: salt.into(),
        stats: RunStats::default(),
        chunks: 1,
        initial: false,
    };
    let v = state
        .put_fence(
            &dir,
            &Fence {
                job: Some(job),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("fence")
        .expect("created");
    state
        .change_ctl(&dir, &CtlChange::Organization(seeded.organization_id.clone()))
        .await
        .expect("org");
    state
        .put_seen(
            &dir,
            "r1",
            &format!("m#{gid}"),
            0,
            &SeenPage {
                started: t(10),
                hashes: vec![fingerprint(salt.as_bytes(), &listed)],
                ids: Vec::new(),
                last: true,
            },
        )
        .await
        .expect("seen");
    // `joined` joined at t(50); a user refresh that began at t(60) stored it.
    let mut group = GroupRecord::new(gid.clone());
    group.observe(Some("Platform Admins"), t(0));
    let member = |uid: &str, at: EpochMillis| {
        let mut u = UserRecord::new(uid);
        u.observe_state(&dsync::directory::UserState::Active, at);
        u.observe_member(&gid, true, at);
        u.entitlements.insert("admin-console".into());
        u.computed_at = Some(at);
        u
    };
    let writes = vec![
        Write::Group {
            record: group,
            expect: None,
        },
        Write::User {
            record: member(&listed, t(10)),
            expect: None,
        },
        Write::User {
            record: member(&joined, t(60)),
            expect: None,
        },
        Write::Member {
            group_id: gid.clone(),
            user_id: listed.clone(),
            present: true,
        },
        Write::Member {
            group_id: gid.clone(),
            user_id: joined.clone(),
            present: true,
        },
    ];
    state.commit(&dir, v, writes).await.expect("commit");

    clock.set(t(100));
    let rules = Rules::parse(&org_rule(&seeded.organization_id, "Platform Admins", "admin-console")).expect("rules");
    let p = Processor::new(
        DirectApi::new(truth, 100),
        MemClaims::new(),
        state.clone(),
        MemQueue::new(clock.clone(), Duration::from_secs(30), 100),
        clock.clone(),
        ProcessorConfig::with_rules(rules),
    );
    let ran = p
        .engine()
        .run(
            &dir,
            &[],
            &Default::default(),
            clock.now().saturating_add(Duration::from_secs(60)),
        )
        .await
        .expect("sweep");
    assert!(matches!(ran, Ran::Worked(_)), "{ran:?}");
    let kept = state.users(&dir, std::slice::from_ref(&joined)).await.expect("read")[0]
        .value
        .clone();
    assert!(kept.is_member(&gid), "the sweep undid a newer read: {kept:?}");
    assert!(kept.entitlements.contains("admin-console"));
    assert!(
        state
            .fence(&dir)
            .await
            .expect("fence")
            .is_some_and(|f| f.value.job.is_none()),
        "the run finished"
    );
}
