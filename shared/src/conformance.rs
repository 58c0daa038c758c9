//! The port conformance suite: what every state store and claim store adapter must do. It runs
//! against the in-memory adapters (unit tests below) and against the DynamoDB adapters on moto
//! (`tests/tests/conformance.rs`), so the fast fake cannot drift from the real thing.
//!
//! Each check uses its own directory and event ids under `ns`, so the suite can share a store.
//! A failed check panics with what differed (this is test support code).

use std::collections::{BTreeMap, BTreeSet};

use crate::clock::{EpochMillis, EpochSeconds};
use crate::directory::UserState;
use crate::model::{GroupRecord, Membership, UserRecord};
use crate::ports::claims::*;
use crate::ports::state::*;

fn t(ms: u64) -> EpochMillis {
    EpochMillis(ms)
}

fn user(uid: &str) -> UserRecord {
    UserRecord {
        user_id: uid.to_string(),
        state: Some(UserState::Active),
        state_at: Some(t(10)),
        groups: BTreeMap::from([
            (
                "g1".to_string(),
                Membership {
                    present: true,
                    at: t(10),
                },
            ),
            (
                "g2".to_string(),
                Membership {
                    present: false,
                    at: t(12),
                },
            ),
        ]),
        groups_read_at: Some(t(9)),
        email_hash: Some("e0".into()),
        idp_hash: Some("i0".into()),
        applied_at: Some(t(10)),
        entitlements: BTreeSet::from(["admin-console".to_string()]),
        computed_at: Some(t(11)),
        rules_fp: "fp".into(),
    }
}

async fn fresh_fence<S: StateStore>(s: &S, dir: &str) -> u64 {
    s.put_fence(dir, &Fence::default(), None)
        .await
        .expect("put fence")
        .expect("fence created")
}

/// Every state store behaviour the engine and the gate rely on. Returns the capacity it billed.
pub async fn state_store<S: StateStore>(store: S, ns: &str) -> (u64, u64) {
    let meter = Meter::new();
    let s = store.metered(meter.clone());
    fence_is_compare_and_set(&s, &format!("{ns}-fence")).await;
    commits_are_atomic_and_fenced(&s, &format!("{ns}-commit")).await;
    records_round_trip_and_page(&s, &format!("{ns}-pages")).await;
    index_lookups_and_aliases(&s, &format!("{ns}-index"), &format!("org_{ns}")).await;
    control_record(&s, &format!("{ns}-ctl")).await;
    seen_pages(&s, &format!("{ns}-seen")).await;
    purge(&s, &format!("{ns}-purge"), &format!("org_{ns}p")).await;
    registry(&s, ns).await;
    cursor_is_compare_and_set(&s, &format!("{ns}-events")).await;
    s.put_run(
        &format!("{ns}-run"),
        &RunSummary {
            id: "r1".into(),
            kind: "reconcile".into(),
            started_at: 1,
            finished_at: 2,
            chunks: 1,
            initial: true,
            stats: RunStats::default(),
        },
    )
    .await
    .expect("put run");
    (meter.read_units(), meter.write_units())
}

async fn fence_is_compare_and_set<S: StateStore>(s: &S, dir: &str) {
    assert_eq!(s.fence(dir).await.expect("read"), None, "no fence yet");
    let f = Fence {
        epoch: 1,
        owner: Some("me".into()),
        lease_until: t(1000),
        deleted_at: None,
        pace_next: t(5),
        job: Some(Job {
            id: "r1".into(),
            kind: JobKind::Group { group_id: "g#1".into() },
            started_at: 77,
            phase: Phase::Members {
                gpage: 1,
                gidx: 2,
                after: Some("u_5".into()),
                page: 3,
                started: Some(70),
            },
            salt: "00ff".into(),
            stats: RunStats {
                pages: 4,
                ..Default::default()
            },
            chunks: 2,
            initial: true,
        }),
    };
    assert_eq!(s.put_fence(dir, &f, None).await.expect("create"), Some(1));
    assert_eq!(
        s.put_fence(dir, &f, None).await.expect("create again"),
        None,
        "must not exist"
    );
    assert_eq!(
        s.put_fence(dir, &f, Some(7)).await.expect("stale"),
        None,
        "wrong version"
    );
    let read = s.fence(dir).await.expect("read").expect("fence");
    assert_eq!(read.version, 1);
    assert_eq!(read.value, f, "the fence round-trips, job included");
    let mut g = f.clone();
    g.owner = None;
    g.job = None;
    assert_eq!(s.put_fence(dir, &g, Some(1)).await.expect("cas"), Some(2));
    let read = s.fence(dir).await.expect("read").expect("fence");
    assert_eq!(read.value, g);
    assert_eq!(read.version, 2);
}

/// The events poller's cursor: created once, then only by compare-and-set on its version, so
/// two runs that read the same version cannot both write.
async fn cursor_is_compare_and_set<S: StateStore>(s: &S, name: &str) {
    assert_eq!(s.cursor(name).await.expect("read"), None, "no cursor yet");
    let fresh = SavedCursor {
        owner: Some("run-a".into()),
        lease_until: t(5000),
        ..Default::default()
    };
    assert_eq!(s.put_cursor(name, &fresh, None).await.expect("create"), Some(1));
    assert_eq!(
        s.put_cursor(name, &fresh, None).await.expect("create again"),
        None,
        "a second run cannot create it too"
    );
    let read = s.cursor(name).await.expect("read").expect("cursor");
    assert_eq!((read.version, &read.value), (1, &fresh), "an empty cursor round-trips");
    let saved = SavedCursor {
        event_id: Some("event_01#x".into()),
        event_at: Some(t(1_700_000_000_123)),
        saved_at: t(1_700_000_060_000),
        caught_up: true,
        owner: None,
        lease_until: t(1_700_000_061_000),
    };
    assert_eq!(s.put_cursor(name, &saved, Some(1)).await.expect("cas"), Some(2));
    assert_eq!(
        s.put_cursor(name, &fresh, Some(1)).await.expect("stale"),
        None,
        "a run holding version 1 cannot overwrite version 2"
    );
    let read = s.cursor(name).await.expect("read").expect("cursor");
    assert_eq!((read.version, &read.value), (2, &saved), "every field round-trips");
    assert_eq!(
        s.cursor(&format!("{name}-other")).await.expect("read"),
        None,
        "cursors are independent by name"
    );
}

async fn commits_are_atomic_and_fenced<S: StateStore>(s: &S, dir: &str) {
    let v = fresh_fence(s, dir).await;
    let g = GroupRecord {
        group_id: "g1".into(),
        name: Some("Admins".into()),
        name_at: Some(t(5)),
        changed_at: None,
        members_applied_at: Some(t(5)),
    };
    // Wrong fence version: nothing lands.
    let w = vec![Write::User {
        record: user("u1"),
        expect: None,
    }];
    assert_eq!(s.commit(dir, v + 1, w.clone()).await, Err(CommitError::Fenced));
    assert!(s.users(dir, &["u1".into()]).await.expect("read").is_empty());
    // Right version: lands, versions start at 1.
    s.commit(
        dir,
        v,
        vec![
            Write::User {
                record: user("u1"),
                expect: None,
            },
            Write::Group {
                record: g.clone(),
                expect: None,
            },
        ],
    )
    .await
    .expect("commit");
    let u = s.users(dir, &["u1".into()]).await.expect("read");
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].version, 1);
    assert_eq!(u[0].value, user("u1"), "user record round-trips");
    let gs = s.groups(dir).await.expect("groups");
    assert_eq!(gs.len(), 1);
    assert_eq!(gs[0].value, g, "group record round-trips");
    // A stale version anywhere cancels every write of the commit.
    let mut u2 = user("u1");
    u2.state = Some(UserState::Inactive);
    let mut g2 = g.clone();
    g2.name = None;
    let r = s
        .commit(
            dir,
            v,
            vec![
                Write::Group {
                    record: g2.clone(),
                    expect: Some(1),
                },
                Write::User {
                    record: u2.clone(),
                    expect: None,
                },
            ],
        )
        .await;
    assert_eq!(r, Err(CommitError::Conflict));
    assert_eq!(
        s.groups(dir).await.expect("groups")[0].value,
        g,
        "the group write of a cancelled commit must not land"
    );
    s.commit(
        dir,
        v,
        vec![Write::User {
            record: u2.clone(),
            expect: Some(1),
        }],
    )
    .await
    .expect("versioned write");
    assert_eq!(s.users(dir, &["u1".into()]).await.expect("read")[0].version, 2);
    // A tombstoned fence fails every commit, whatever the version.
    let mut f = s.fence(dir).await.expect("read").expect("fence");
    f.value.deleted_at = Some(t(99));
    let v2 = s
        .put_fence(dir, &f.value, Some(f.version))
        .await
        .expect("tombstone")
        .expect("cas");
    let r = s
        .commit(
            dir,
            v2,
            vec![Write::User {
                record: user("u9"),
                expect: None,
            }],
        )
        .await;
    assert_eq!(r, Err(CommitError::Fenced), "a deleted directory takes no writes");
    assert!(s.users(dir, &["u9".into()]).await.expect("read").is_empty());
    // Empty commits are no-ops; oversized ones are refused.
    s.commit(dir, 12345, Vec::new()).await.expect("empty commit");
    let many: Vec<Write> = (0..=MAX_COMMIT)
        .map(|i| Write::Alias {
            user_id: format!("x{i}"),
        })
        .collect();
    assert!(matches!(s.commit(dir, v2, many).await, Err(CommitError::Store(_))));
}

async fn records_round_trip_and_page<S: StateStore>(s: &S, dir: &str) {
    let v = fresh_fence(s, dir).await;
    let ids: Vec<String> = (0..25).map(|i| format!("u{i:03}")).collect();
    for chunk in ids.chunks(10) {
        let writes = chunk
            .iter()
            .map(|u| Write::User {
                record: UserRecord::new(u.as_str()),
                expect: None,
            })
            .collect();
        s.commit(dir, v, writes).await.expect("commit");
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = s.users_page(dir, after.as_deref(), 7).await.expect("page");
        assert!(p.items.len() <= 7);
        seen.extend(p.items.into_iter().map(|u| u.value.user_id));
        match p.after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every user once, in id order");
    // Repeated ids are fine: each record comes back once.
    let mut wanted: Vec<String> = vec!["u003".into(), "missing".into(), "u017".into(), "u003".into()];
    wanted.extend((0..120).map(|i| format!("nobody{i}")));
    let got: Vec<String> = s
        .users(dir, &wanted)
        .await
        .expect("batch")
        .into_iter()
        .map(|u| u.value.user_id)
        .collect();
    assert_eq!(
        got.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"u003".to_string(), &"u017".to_string()])
    );
    assert_eq!(got.len(), 2, "each record once: {got:?}");
}

async fn index_lookups_and_aliases<S: StateStore>(s: &S, dir: &str, org: &str) {
    let v = fresh_fence(s, dir).await;
    let mut writes: Vec<Write> = (0..5)
        .map(|i| Write::Member {
            group_id: "g1".into(),
            user_id: format!("u{i}"),
            present: true,
        })
        .collect();
    writes.push(Write::Member {
        group_id: "g2".into(),
        user_id: "u0".into(),
        present: true,
    });
    writes.push(Write::Lookup {
        organization_id: org.into(),
        kind: LookupKind::Email,
        hash: "h1".into(),
        user_id: "u1".into(),
        present: true,
    });
    writes.push(Write::Lookup {
        organization_id: org.into(),
        kind: LookupKind::Idp,
        hash: "h1".into(),
        user_id: "u2".into(),
        present: true,
    });
    writes.push(Write::Alias { user_id: "u1".into() });
    s.commit(dir, v, writes).await.expect("commit");
    let first = s.members_page(dir, "g1", None, 3).await.expect("members");
    assert_eq!(first.items, vec!["u0", "u1", "u2"]);
    let rest = s
        .members_page(dir, "g1", first.after.as_deref(), 3)
        .await
        .expect("members");
    assert_eq!(rest.items, vec!["u3", "u4"]);
    assert_eq!(rest.after, None);
    assert_eq!(s.members_page(dir, "g2", None, 10).await.expect("g2").items, vec!["u0"]);
    s.commit(
        dir,
        v,
        vec![
            Write::Member {
                group_id: "g1".into(),
                user_id: "u3".into(),
                present: false,
            },
            Write::Lookup {
                organization_id: org.into(),
                kind: LookupKind::Idp,
                hash: "h1".into(),
                user_id: "u2".into(),
                present: false,
            },
        ],
    )
    .await
    .expect("removals");
    assert_eq!(
        s.members_page(dir, "g1", None, 10).await.expect("g1").items,
        vec!["u0", "u1", "u2", "u4"]
    );
    assert_eq!(
        s.lookups(org, LookupKind::Email, "h1").await.expect("email"),
        vec![(dir.to_string(), "u1".to_string())]
    );
    assert!(s.lookups(org, LookupKind::Idp, "h1").await.expect("idp").is_empty());
    assert!(s
        .lookups("org_other", LookupKind::Email, "h1")
        .await
        .expect("other org")
        .is_empty());
    assert_eq!(s.alias("u1").await.expect("alias"), Some(dir.to_string()));
    assert_eq!(s.alias("u2").await.expect("alias"), None);
}

async fn control_record<S: StateStore>(s: &S, dir: &str) {
    assert_eq!(s.ctl(dir).await.expect("ctl"), Ctl::default());
    // Concurrent absorbers never lose each other's additions.
    let adds = (0..12).map(|i| {
        let s = s.clone();
        let dir = dir.to_string();
        async move {
            s.absorb(
                &dir,
                &Absorb {
                    users: vec![format!("u{i}"), "shared".into()],
                    groups: if i % 3 == 0 { vec![format!("g{i}")] } else { Vec::new() },
                    full: None,
                    at: t(1000 + i),
                },
            )
            .await
        }
    });
    for r in futures::future::join_all(adds).await {
        r.expect("absorb");
    }
    let c = s.ctl(dir).await.expect("ctl");
    assert_eq!(c.pending_users.len(), 13, "{:?}", c.pending_users);
    assert_eq!(c.pending_groups.len(), 4);
    assert_eq!(
        c.pending_users.get("u3"),
        Some(&t(1003)),
        "a user's time is its request's"
    );
    let shared = c.pending_users.get("shared").copied().expect("shared pending");
    // A drain removes only what was asked before the time given: a later request stays.
    s.drain(
        dir,
        &[
            ("u1".into(), t(1001)),
            ("u2".into(), t(1001)),
            ("shared".into(), shared),
            ("nope".into(), t(5000)),
        ],
        &["g0".into()],
    )
    .await
    .expect("drain");
    let c = s.ctl(dir).await.expect("ctl");
    assert!(!c.pending_users.contains_key("u1") && !c.pending_users.contains_key("shared"));
    assert_eq!(
        c.pending_users.get("u2"),
        Some(&t(1002)),
        "asked after the drain's time: stays"
    );
    assert_eq!(c.pending_users.len(), 11);
    assert_eq!(c.pending_groups.len(), 3);
    // A request again moves the user's time on; more users than one update holds.
    let many: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    s.absorb(
        dir,
        &Absorb {
            users: [many.clone(), vec!["u2".into()]].concat(),
            at: t(2000),
            ..Default::default()
        },
    )
    .await
    .expect("absorb many");
    let c = s.ctl(dir).await.expect("ctl");
    assert_eq!(c.pending_users.len(), 71);
    assert_eq!(c.pending_users.get("u2"), Some(&t(2000)));
    assert!(
        c.user_pending("u2", Some(t(2000))),
        "a read begun at the request's time does not reflect it"
    );
    assert!(!c.user_pending("u2", Some(t(2001))), "a read begun after it does");
    // An older request delivered late never moves the time back.
    s.absorb(
        dir,
        &Absorb {
            users: vec!["u2".into()],
            at: t(1500),
            ..Default::default()
        },
    )
    .await
    .expect("absorb older");
    assert_eq!(s.pending_user(dir, "u2").await.expect("pending u2"), Some(t(2000)));
    assert_eq!(s.pending_user(dir, "zz").await.expect("pending zz"), None);
    let all: Vec<(String, EpochMillis)> = c.pending_users.keys().map(|u| (u.clone(), t(1999))).collect();
    s.drain(dir, &all, &[]).await.expect("drain all before 1999");
    let c = s.ctl(dir).await.expect("ctl");
    let left: BTreeSet<&str> = c.pending_users.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = many.iter().map(String::as_str).chain(["u2"]).collect();
    assert_eq!(left, want, "only the requests made at 2000 stay");
    let all: Vec<(String, EpochMillis)> = c.pending_users.keys().map(|u| (u.clone(), t(2000))).collect();
    s.drain(dir, &all, &[]).await.expect("drain all");
    assert!(s.ctl(dir).await.expect("ctl").pending_users.is_empty());
    // More pending users than the control record's page: paged, each found on its own.
    let lots: Vec<String> = (0..PENDING_PAGE + 5).map(|i| format!("p{i:04}")).collect();
    s.absorb(
        dir,
        &Absorb {
            users: lots.clone(),
            at: t(3000),
            ..Default::default()
        },
    )
    .await
    .expect("absorb a page and more");
    let c = s.ctl(dir).await.expect("ctl");
    assert_eq!(c.pending_users.len(), PENDING_PAGE);
    assert!(c.pending_users_more);
    let last = lots[PENDING_PAGE - 1].as_str();
    assert!(c.pending_users.contains_key(last) && !c.pending_users.contains_key(&lots[PENDING_PAGE]));
    let (rest, more) = s.pending_users(dir, Some(last), 100).await.expect("next page");
    assert_eq!(rest.len(), 5);
    assert!(!more);
    assert_eq!(rest[0], (lots[PENDING_PAGE].clone(), t(3000)));
    let (exact, more) = s.pending_users(dir, None, PENDING_PAGE + 5).await.expect("exact page");
    assert_eq!((exact.len(), more), (PENDING_PAGE + 5, false));
    assert_eq!(
        s.pending_user(dir, &lots[PENDING_PAGE + 4])
            .await
            .expect("beyond the page"),
        Some(t(3000))
    );
    let all: Vec<(String, EpochMillis)> = lots.iter().map(|u| (u.clone(), t(3000))).collect();
    s.drain(dir, &all, &[]).await.expect("drain the lot");
    let c = s.ctl(dir).await.expect("ctl");
    assert!(c.pending_users.is_empty() && !c.pending_users_more);
    // Full requests: the earliest `first`, the latest `after`.
    for (first, after) in [(100, 150), (90, 140), (120, 200), (80, 160)] {
        s.absorb(
            dir,
            &Absorb {
                full: Some(FullRequest {
                    first: t(first),
                    after: t(after),
                }),
                ..Default::default()
            },
        )
        .await
        .expect("full");
    }
    assert_eq!(
        s.ctl(dir).await.expect("ctl").full,
        Some(FullRequest {
            first: t(100),
            after: t(200)
        })
    );
    s.change_ctl(dir, &CtlChange::ClearFull { upto: t(199) })
        .await
        .expect("clear");
    assert!(
        s.ctl(dir).await.expect("ctl").full.is_some(),
        "a request pushed past `upto` stays"
    );
    s.change_ctl(dir, &CtlChange::ClearFull { upto: t(200) })
        .await
        .expect("clear");
    assert_eq!(s.ctl(dir).await.expect("ctl").full, None);
    // Monotonic applied mark.
    for (at, cost) in [(50, 1), (70, 2), (60, 3)] {
        s.change_ctl(dir, &CtlChange::FullApplied { at: t(at), cost })
            .await
            .expect("applied");
    }
    let c = s.ctl(dir).await.expect("ctl");
    assert_eq!((c.full_applied_at, c.full_cost), (Some(t(70)), Some(2)));
    // Propagation marks.
    for (g, since) in [("ga", 10), ("gb", 20), ("ga", 15)] {
        s.change_ctl(
            dir,
            &CtlChange::Propagating {
                group_id: g.into(),
                since: t(since),
            },
        )
        .await
        .expect("mark");
    }
    s.change_ctl(
        dir,
        &CtlChange::Propagated {
            group_id: "ga".into(),
            upto: t(12),
        },
    )
    .await
    .expect("not yet");
    s.change_ctl(
        dir,
        &CtlChange::Propagated {
            group_id: "gb".into(),
            upto: t(25),
        },
    )
    .await
    .expect("done");
    assert_eq!(
        s.ctl(dir).await.expect("ctl").propagating,
        BTreeMap::from([("ga".to_string(), t(15))])
    );
    // The group overflow mark: raised, never lowered; moot once a full read after it is applied.
    for since in [80, 90, 85] {
        s.change_ctl(dir, &CtlChange::GroupsOverflow { since: t(since) })
            .await
            .expect("overflow");
    }
    let c = s.ctl(dir).await.expect("ctl");
    assert_eq!(
        c.groups_overflow,
        Some(t(90)),
        "an older overflow never moves the mark back"
    );
    assert!(c.groups_overflowing(), "full read applied from 70 does not reflect 90");
    s.change_ctl(dir, &CtlChange::FullApplied { at: t(91), cost: 2 })
        .await
        .expect("applied");
    assert!(!s.ctl(dir).await.expect("ctl").groups_overflowing());
    // Organization, tombstone (first wins), last run.
    s.change_ctl(dir, &CtlChange::Organization("org_1".into()))
        .await
        .expect("org");
    s.change_ctl(dir, &CtlChange::Deleted(t(300))).await.expect("deleted");
    s.change_ctl(dir, &CtlChange::Deleted(t(400)))
        .await
        .expect("deleted again");
    let run = RunSummary {
        id: "r9".into(),
        kind: "reconcile".into(),
        started_at: 1,
        finished_at: 9,
        chunks: 3,
        initial: false,
        stats: RunStats {
            users_created: 4,
            ..Default::default()
        },
    };
    s.change_ctl(dir, &CtlChange::LastRun(run.clone())).await.expect("run");
    let c = s.ctl(dir).await.expect("ctl");
    assert_eq!(c.organization_id.as_deref(), Some("org_1"));
    assert_eq!(c.deleted_at, Some(t(300)));
    assert_eq!(c.last_run, Some(run));
}

async fn seen_pages<S: StateStore>(s: &S, dir: &str) {
    let run = "r1";
    let p0 = SeenPage {
        started: t(5),
        hashes: vec![0, 1, u64::MAX, 0x8000_0000_0000_0001],
        ids: Vec::new(),
        last: false,
    };
    let p1 = SeenPage {
        started: t(5),
        hashes: Vec::new(),
        ids: vec!["g1".into(), "g#2".into()],
        last: true,
    };
    s.put_seen(dir, run, "users", 1, &p1).await.expect("p1");
    s.put_seen(dir, run, "users", 0, &p0).await.expect("p0");
    s.put_seen(dir, run, "users2", 0, &p1).await.expect("other container");
    assert_eq!(
        s.seen(dir, run, "users").await.expect("seen"),
        vec![p0.clone(), p1.clone()]
    );
    assert_eq!(s.seen_page(dir, run, "users", 1).await.expect("page"), Some(p1));
    assert_eq!(s.seen_page(dir, run, "users", 2).await.expect("page"), None);
    assert!(s.seen(dir, "r2", "users").await.expect("other run").is_empty());
}

async fn purge<S: StateStore>(s: &S, dir: &str, org: &str) {
    let v = fresh_fence(s, dir).await;
    s.change_ctl(dir, &CtlChange::Organization(org.into()))
        .await
        .expect("org");
    for i in 0..30 {
        let mut u = user(&format!("u{i}"));
        u.email_hash = Some(format!("h{i}"));
        s.commit(
            dir,
            v,
            vec![
                Write::User {
                    record: u,
                    expect: None,
                },
                Write::Member {
                    group_id: "g1".into(),
                    user_id: format!("u{i}"),
                    present: true,
                },
                Write::Lookup {
                    organization_id: org.into(),
                    kind: LookupKind::Email,
                    hash: format!("h{i}"),
                    user_id: format!("u{i}"),
                    present: true,
                },
                Write::Alias {
                    user_id: format!("u{i}"),
                },
            ],
        )
        .await
        .expect("commit");
    }
    let mut after: Option<String> = None;
    let mut rounds = 0;
    loop {
        let p = s.purge_page(dir, after.as_deref(), 25).await.expect("purge");
        rounds += 1;
        assert!(rounds < 50, "purge must end");
        match p.after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert!(s.users_page(dir, None, 10).await.expect("users").items.is_empty());
    assert!(s
        .members_page(dir, "g1", None, 10)
        .await
        .expect("members")
        .items
        .is_empty());
    assert!(s
        .lookups(org, LookupKind::Email, "h3")
        .await
        .expect("lookup")
        .is_empty());
    assert_eq!(s.alias("u3").await.expect("alias"), None);
    assert!(
        s.fence(dir).await.expect("fence").is_some(),
        "the fence survives a purge"
    );
    assert_eq!(
        s.ctl(dir).await.expect("ctl").organization_id.as_deref(),
        Some(org),
        "the control record survives a purge"
    );
}

async fn registry<S: StateStore>(s: &S, ns: &str) {
    let ids: Vec<String> = (0..5).map(|i| format!("{ns}-reg-{i}")).collect();
    for (i, d) in ids.iter().enumerate().rev() {
        s.register(&Registered {
            directory_id: d.clone(),
            organization_id: Some(format!("org_{i}")),
            deleted: i == 3,
        })
        .await
        .expect("register");
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = s.registered(after.as_deref(), 2).await.expect("registry");
        seen.extend(
            p.items
                .into_iter()
                .filter(|r| r.directory_id.starts_with(&format!("{ns}-reg-"))),
        );
        match p.after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    assert_eq!(seen.iter().map(|r| r.directory_id.clone()).collect::<Vec<_>>(), ids);
    assert!(seen[3].deleted && !seen[2].deleted);
    assert_eq!(seen[1].organization_id.as_deref(), Some("org_1"));
}

/// Every claim store behaviour the processor relies on.
pub async fn claim_store<C: ClaimStore>(claims: C, ns: &str) {
    let now = t(1_700_000_000_000);
    let far = EpochSeconds(now.to_seconds().0 + 86_400);
    let req = |id: &'static str, token: &'static str, at: EpochMillis, lease: EpochMillis| ClaimRequest {
        event_id: id,
        event_type: "dsync.user.updated",
        source: "webhook",
        token,
        now: at,
        lease_until: lease,
        expires_at: far,
        received_at: Some(at),
    };
    let id1: &'static str = Box::leak(format!("{ns}-e1").into_boxed_str());
    let id2: &'static str = Box::leak(format!("{ns}-e2").into_boxed_str());
    let id3: &'static str = Box::leak(format!("{ns}-e3").into_boxed_str());
    let lease = now.saturating_add(std::time::Duration::from_secs(60));
    assert_eq!(
        claims.claim(&req(id1, "a", now, lease)).await.expect("claim"),
        ClaimResult::Acquired
    );
    assert_eq!(
        claims.claim(&req(id1, "b", now, lease)).await.expect("claim"),
        ClaimResult::HeldElsewhere { lease_until: lease }
    );
    let done = |token: &'static str| Completion {
        event_id: id1,
        token,
        outcome: "applied",
        applied_by: Some("c1"),
        workos_calls: 2,
        done_at: now,
        expires_at: far,
    };
    assert!(!claims.complete(&done("b")).await.expect("complete"), "not our claim");
    assert!(claims.complete(&done("a")).await.expect("complete"));
    assert!(!claims.complete(&done("a")).await.expect("complete twice"));
    assert!(matches!(
        claims.claim(&req(id1, "c", now, lease)).await.expect("claim"),
        ClaimResult::AlreadyDone { status } if status == COMPLETED
    ));
    // A lapsed lease can be taken over; a release by another token does nothing.
    let short = now.saturating_add(std::time::Duration::from_millis(10));
    assert_eq!(
        claims.claim(&req(id2, "a", now, short)).await.expect("claim"),
        ClaimResult::Acquired
    );
    let later = now.saturating_add(std::time::Duration::from_secs(1));
    claims.release(id2, "zzz").await.expect("release other");
    assert_eq!(
        claims.claim(&req(id2, "b", later, lease)).await.expect("take over"),
        ClaimResult::Acquired
    );
    claims.release(id2, "b").await.expect("release own");
    assert_eq!(
        claims.claim(&req(id2, "c", later, lease)).await.expect("after release"),
        ClaimResult::Acquired
    );
    // An expired record (past `expires_at`) counts as absent.
    let mut old = req(id3, "a", now, lease);
    old.expires_at = EpochSeconds(now.to_seconds().0 - 1);
    assert_eq!(claims.claim(&old).await.expect("claim"), ClaimResult::Acquired);
    assert_eq!(
        claims
            .claim(&req(id3, "b", now, lease))
            .await
            .expect("claim after expiry"),
        ClaimResult::Acquired
    );
    // Invalid messages are recorded once.
    let key = format!("invalid#{ns}");
    claims
        .record_invalid(&key, "not json", now, far)
        .await
        .expect("invalid");
    claims
        .record_invalid(&key, "not json", now, far)
        .await
        .expect("invalid again");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::memory::{MemClaims, MemState};

    #[tokio::test]
    async fn the_in_memory_state_store_conforms() {
        let (r, w) = state_store(MemState::new(), "mem").await;
        assert!(r > 0 && w > 0, "capacity is billed ({r} read, {w} write)");
    }

    #[tokio::test]
    async fn the_in_memory_claim_store_conforms() {
        claim_store(MemClaims::new(), "mem").await;
    }

    #[test]
    fn meters_are_shared_by_clones() {
        let m = Meter::new();
        let s = MemState::new().metered(std::sync::Arc::clone(&m));
        let _c = s.clone();
        m.add_write_units(3);
        assert_eq!(m.write_units(), 3);
    }
}

// ------------------------------------------------------------------------------------ work queue

/// A message as the consumer (the Lambda event source) receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub body: String,
    pub group: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub receipt: String,
    pub receive_count: u32,
}

/// The consumer side of a queue, for the suite: what the event source does with SQS.
pub trait QueueProbe: Send + Sync {
    /// Receive what is visible now (at most 10), waiting up to about a second for something.
    fn receive(&self) -> impl std::future::Future<Output = Vec<Received>> + Send;
    fn delete(&self, receipt: &str) -> impl std::future::Future<Output = ()> + Send;
}

/// Receive until `want` messages came or `within` passed.
async fn receive_for<P: QueueProbe>(probe: &P, want: usize, within: std::time::Duration) -> Vec<Received> {
    let until = std::time::Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < want && std::time::Instant::now() < until {
        out.extend(probe.receive().await);
    }
    out
}

/// What the processor and the poller rely on from the queue: a continuation is held back for its
/// delay and carries its directory as group and `source=continuation`; a deferred message is
/// invisible for the delay and then comes back, counted as received again; `send_all` delivers
/// every message (more than one batch, one near the byte limit) with its group and attributes.
/// Uses real time (SQS delays are whole seconds): about 6 s.
pub async fn work_queue<Q, P>(queue: &Q, probe: &P, ns: &str)
where
    Q: crate::ports::queue::WorkQueue + crate::ports::queue::Outbox,
    P: QueueProbe,
{
    use crate::ports::queue::{Outgoing, CONTINUATION};
    use std::time::{Duration, Instant};
    let (now_dir, later_dir) = (format!("{ns}-now"), format!("{ns}-later"));

    // Continuations: one now, one in 2 s.
    let sent = Instant::now();
    queue
        .continue_later(&later_dir, Duration::from_secs(2))
        .await
        .expect("continue_later (2 s)");
    queue
        .continue_later(&now_dir, Duration::ZERO)
        .await
        .expect("continue_later (now)");
    let first = receive_for(probe, 2, Duration::from_millis(1200)).await;
    assert!(
        sent.elapsed() >= Duration::from_secs(2) || first.len() == 1,
        "only the undelayed continuation is visible before 2 s: {first:?}"
    );
    let now_msg = first
        .iter()
        .find(|m| m.group.as_deref() == Some(now_dir.as_str()))
        .expect("the undelayed continuation arrived");
    let body: serde_json::Value = serde_json::from_str(&now_msg.body).expect("continuation body is JSON");
    assert_eq!(body["object"], CONTINUATION);
    assert_eq!(body["directory_id"], now_dir.as_str());
    assert_eq!(
        now_msg.attributes.get("source").map(String::as_str),
        Some("continuation")
    );
    assert_eq!(now_msg.receive_count, 1);
    probe.delete(&now_msg.receipt).await;

    let later = match first.iter().find(|m| m.group.as_deref() == Some(later_dir.as_str())) {
        Some(m) => m.clone(),
        None => receive_for(probe, 1, Duration::from_secs(4))
            .await
            .into_iter()
            .next()
            .expect("the delayed continuation arrived"),
    };
    assert!(sent.elapsed() >= Duration::from_millis(1900), "delay respected");
    assert_eq!(later.group.as_deref(), Some(later_dir.as_str()));

    // Defer it by 2 s: gone meanwhile, then back with a second receive.
    let deferred = Instant::now();
    queue
        .defer(&later.receipt, Duration::from_secs(2))
        .await
        .expect("defer");
    let back = receive_for(probe, 1, Duration::from_secs(5)).await;
    assert_eq!(back.len(), 1, "the deferred message came back: {back:?}");
    assert!(
        deferred.elapsed() >= Duration::from_millis(1900),
        "invisible for the delay"
    );
    assert_eq!(back[0].body, later.body);
    assert_eq!(back[0].receive_count, 2, "counted as received twice");
    probe.delete(&back[0].receipt).await;

    // A batch send: 23 messages in three groups, one of 200 KiB (its own batch by size).
    let out: Vec<Outgoing> = (0..23)
        .map(|i| Outgoing {
            body: if i == 5 {
                format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(200 * 1024))
            } else {
                format!("{{\"i\":{i}}}")
            },
            group: format!("{ns}-g{}", i % 3),
            attributes: vec![
                ("source", "events-api".into()),
                ("workos_event_id", format!("event_{ns}_{i}")),
            ],
        })
        .collect();
    queue.send_all(&out).await.expect("send_all");
    let got = receive_for(probe, out.len(), Duration::from_secs(10)).await;
    let mut seen = BTreeSet::new();
    for m in &got {
        let v: serde_json::Value = serde_json::from_str(&m.body).expect("batch body is JSON");
        let i = v["i"].as_u64().expect("index") as usize;
        let o = &out[i];
        assert_eq!(m.body, o.body);
        assert_eq!(m.group.as_deref(), Some(o.group.as_str()));
        for (k, val) in &o.attributes {
            assert_eq!(m.attributes.get(*k), Some(val), "attribute {k}");
        }
        assert!(seen.insert(i), "message {i} delivered once");
        probe.delete(&m.receipt).await;
    }
    assert_eq!(seen.len(), out.len(), "every message of the batch send arrived");
    assert!(probe.receive().await.is_empty(), "nothing else on the queue");
}
