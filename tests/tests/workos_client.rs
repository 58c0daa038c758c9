//! `dsync::workos::WorkosClient` against the WorkOS sandbox: pagination, retries, the deadline,
//! auth errors and per-directory pacing of `/directory_users`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dsync::adapters::workos::{WorkosClient, WorkosConfig};
use dsync::clock::{Clock, EpochMillis, SystemClock};
use dsync::directory::{ApiError, CallBudget, DirGroup, DirUser, DirectoryApi, Listing, UserState};
use workos_sandbox::{route, Fault, Sandbox, SandboxConfig, SeedSpec};

type Res = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "sk_test_workos_client";

/// Whole lists, walked page by page through the port (as the engine's jobs do, minus the
/// checkpoints).
trait ListAll {
    async fn list_directory_users(&self, d: &str, b: &CallBudget) -> Result<Vec<DirUser>, ApiError>;
    async fn list_group_users(&self, d: &str, g: &str, b: &CallBudget) -> Result<Vec<DirUser>, ApiError>;
    async fn list_directory_groups(&self, d: &str, b: &CallBudget) -> Result<Vec<DirGroup>, ApiError>;
    async fn list_user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Vec<DirGroup>, ApiError>;
}

async fn users_of(c: &WorkosClient, d: &str, l: Listing<'_>, b: &CallBudget) -> Result<Vec<DirUser>, ApiError> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let Some(p) = c.users_page(d, l, after.as_deref(), b).await? else {
            return Ok(all);
        };
        all.extend(p.items);
        match p.after {
            Some(a) => after = Some(a),
            None => return Ok(all),
        }
    }
}

impl ListAll for WorkosClient {
    async fn list_directory_users(&self, d: &str, b: &CallBudget) -> Result<Vec<DirUser>, ApiError> {
        users_of(self, d, Listing::Directory, b).await
    }
    async fn list_group_users(&self, d: &str, g: &str, b: &CallBudget) -> Result<Vec<DirUser>, ApiError> {
        users_of(self, d, Listing::Group(g), b).await
    }
    async fn list_directory_groups(&self, d: &str, b: &CallBudget) -> Result<Vec<DirGroup>, ApiError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let Some(p) = self.groups_page(d, after.as_deref(), b).await? else {
                return Ok(all);
            };
            all.extend(p.items);
            match p.after {
                Some(a) => after = Some(a),
                None => return Ok(all),
            }
        }
    }
    async fn list_user_groups(&self, d: &str, u: &str, b: &CallBudget) -> Result<Vec<DirGroup>, ApiError> {
        Ok(self.user_groups(d, u, b).await?.unwrap_or_default())
    }
}

async fn sandbox() -> Result<Sandbox, std::io::Error> {
    Sandbox::start(SandboxConfig {
        rate_limit_per_sec: Some(4),
        ..SandboxConfig::new(KEY)
    })
    .await
}

fn client_with_key(sb: &Sandbox, key: &str) -> WorkosClient {
    let config = WorkosConfig {
        base_url: sb.base_url(),
        ..WorkosConfig::new(key)
    };
    WorkosClient::new(config, SystemClock).expect("client")
}

fn client(sb: &Sandbox) -> WorkosClient {
    client_with_key(sb, KEY)
}

fn in_secs(secs: u64) -> EpochMillis {
    SystemClock.now().saturating_add(Duration::from_secs(secs))
}

fn budget() -> CallBudget {
    CallBudget::until(in_secs(20))
}

fn set<'a>(ids: impl IntoIterator<Item = &'a String>) -> HashSet<String> {
    ids.into_iter().cloned().collect()
}

#[tokio::test]
async fn lists_walk_every_page_and_gets_read_objects() -> Res {
    let sb = sandbox().await?;
    let seeded = sb.seed_directory(
        SeedSpec::new("Acme")
            .group("Enterprise Admins", 250)
            .group("Developers", 2)
            .extra_users(3),
    );
    let dir = seeded.directory_id.as_str();
    let admins = &seeded.groups[0];
    let devs = &seeded.groups[1];
    let c = client(&sb);

    // 250 members at 100 a page: exactly 3 requests.
    let b = budget();
    let users = c.list_group_users(dir, &admins.id, &b).await?;
    assert_eq!(users.len(), 250);
    assert_eq!(set(users.iter().map(|u| &u.id)), set(&admins.user_ids));
    assert!(users
        .iter()
        .all(|u| u.directory_id == dir && u.state == UserState::Active));
    assert_eq!(b.calls(), 3);
    assert_eq!(sb.calls(route::LIST_USERS), 3);

    // The whole directory: 255 users, 3 pages.
    let b = budget();
    let all = c.list_directory_users(dir, &b).await?;
    assert_eq!(all.len(), 255);
    assert_eq!(set(all.iter().map(|u| &u.id)), set(&seeded.user_ids));
    assert_eq!(b.calls(), 3);

    let b = budget();
    let groups = c.list_directory_groups(dir, &b).await?;
    let names: HashSet<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, HashSet::from(["Enterprise Admins", "Developers"]));
    assert_eq!(b.calls(), 1);

    // A user in two groups.
    let member = &admins.user_ids[0];
    assert!(sb.add_member(member, &devs.id)?);
    let b = budget();
    let mine = c.list_user_groups(dir, member, &b).await?;
    assert_eq!(
        set(mine.iter().map(|g| &g.id)),
        HashSet::from([admins.id.clone(), devs.id.clone()])
    );
    assert_eq!(b.calls(), 1);

    let b = budget();
    let user = c.get_user(dir, member, &b).await?.expect("user exists");
    assert_eq!(
        (user.id.as_str(), user.directory_id.as_str(), &user.state),
        (member.as_str(), dir, &UserState::Active)
    );
    assert!(sb.rename_group(&devs.id, "Engineers")?);
    let group = c.get_group(dir, &devs.id, &b).await?.expect("group exists");
    assert_eq!(
        (group.id.as_str(), group.name.as_str()),
        (devs.id.as_str(), "Engineers")
    );

    sb.delete_user(member)?;
    assert_eq!(c.get_user(dir, member, &b).await?, None);
    assert_eq!(c.get_group(dir, "directory_group_missing", &b).await?, None);
    assert_eq!(b.calls(), 4);
    assert_eq!(sb.calls_with_status(route::LIST_USERS, 429), 0);
    assert_eq!(sb.calls_with_status(route::GET_USER, 429), 0);
    Ok(())
}

#[tokio::test]
async fn a_429_waits_for_retry_after_then_succeeds() -> Res {
    let sb = sandbox().await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 2));
    let group = &seeded.groups[0];
    sb.inject(route::GET_GROUP, 1, Fault::rate_limited(1));
    let b = budget();
    let started = Instant::now();
    let got = client(&sb).get_group(&seeded.directory_id, &group.id, &b).await?;
    assert_eq!(got.map(|g| g.name), Some("Admins".to_string()));
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.calls(), 2);
    assert_eq!(sb.calls(route::GET_GROUP), 2);
    assert_eq!(sb.calls_with_status(route::GET_GROUP, 429), 1);
    Ok(())
}

#[tokio::test]
async fn server_errors_are_retried() -> Res {
    let sb = sandbox().await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 2).group("Devs", 1));
    sb.inject(route::LIST_GROUPS, 2, Fault::status(503));
    let b = budget();
    let groups = client(&sb).list_directory_groups(&seeded.directory_id, &b).await?;
    assert_eq!(groups.len(), 2);
    assert_eq!(b.calls(), 3);
    assert_eq!(sb.calls_with_status(route::LIST_GROUPS, 503), 2);
    Ok(())
}

#[tokio::test]
async fn an_outage_ends_in_an_error_before_the_deadline() -> Res {
    let sb = sandbox().await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 2));
    sb.set_outage(true);
    let deadline = in_secs(3);
    let b = CallBudget::until(deadline);
    let c = client(&sb);
    let r = tokio::time::timeout(Duration::from_secs(5), c.list_directory_users(&seeded.directory_id, &b)).await?;
    assert!(SystemClock.now() < deadline, "returned after the deadline");
    match r {
        Err(ApiError::Server {
            status: 503,
            request_id,
        }) => assert!(request_id.is_some()),
        other => panic!("expected the last 503, got {other:?}"),
    }
    assert!(b.calls() >= 1);
    assert_eq!(u64::from(b.calls()), sb.calls(route::LIST_USERS));
    Ok(())
}

#[tokio::test]
async fn a_passed_deadline_makes_no_call() -> Res {
    let sb = sandbox().await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 2));
    let c = client(&sb);
    let b = CallBudget::until(SystemClock.now().saturating_sub(Duration::from_secs(1)));
    let dir = seeded.directory_id.as_str();
    assert_eq!(c.list_directory_users(dir, &b).await, Err(ApiError::DeadlineExceeded));
    assert_eq!(
        c.get_group(dir, &seeded.groups[0].id, &b).await,
        Err(ApiError::DeadlineExceeded)
    );
    assert_eq!(b.calls(), 0);
    assert!(sb.call_stats().is_empty(), "{:?}", sb.call_stats());
    Ok(())
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_and_not_retried() -> Res {
    let sb = sandbox().await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 2));
    let b = budget();
    let r = client_with_key(&sb, "sk_test_wrong")
        .list_directory_groups(&seeded.directory_id, &b)
        .await;
    assert_eq!(r, Err(ApiError::Auth { status: 401 }));
    assert_eq!(b.calls(), 1);
    Ok(())
}

#[tokio::test]
async fn client_errors_keep_the_workos_message_and_are_not_retried() -> Res {
    let sb = sandbox().await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 2));
    sb.inject(
        route::LIST_GROUPS,
        1,
        Fault::Error {
            status: 422,
            message: "Validation failed".into(),
        },
    );
    let b = budget();
    let r = client(&sb).list_directory_groups(&seeded.directory_id, &b).await;
    assert_eq!(
        r,
        Err(ApiError::Client {
            status: 422,
            message: "Validation failed".into()
        })
    );
    assert_eq!(b.calls(), 1);
    Ok(())
}

#[tokio::test]
async fn directory_users_are_paced_per_directory() -> Res {
    let sb = sandbox().await?;
    let a = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 3));
    let z = sb.seed_directory(SeedSpec::new("Zeta").group("Admins", 3));
    let c = client(&sb);

    // 8 requests for one directory at 4/s: no 429, and at least 7 intervals of 250 ms.
    let b = budget();
    let started = Instant::now();
    for i in 0..8 {
        if i % 2 == 0 {
            assert_eq!(c.list_directory_users(&a.directory_id, &b).await?.len(), 3);
        } else {
            assert!(c.get_user(&a.directory_id, &a.user_ids[i % 3], &b).await?.is_some());
        }
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(b.calls(), 8, "no retries");
    assert_eq!(sb.calls_with_status(route::LIST_USERS, 429), 0);
    assert_eq!(sb.calls_with_status(route::GET_USER, 429), 0);

    // Two directories side by side: 4 each take ~750 ms, not the ~1750 ms of 8 paced together.
    sb.reset_rate_limit();
    let c = client(&sb);
    let b = budget();
    let walk = |dir: String| {
        let (c, b) = (&c, &b);
        async move {
            for _ in 0..4 {
                c.list_directory_users(&dir, b).await?;
            }
            Ok::<(), ApiError>(())
        }
    };
    let started = Instant::now();
    let (ra, rz) = tokio::join!(walk(a.directory_id.clone()), walk(z.directory_id.clone()));
    ra?;
    rz?;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1400), "{elapsed:?}");
    assert_eq!(b.calls(), 8);
    assert_eq!(sb.calls_with_status(route::LIST_USERS, 429), 0);
    Ok(())
}
