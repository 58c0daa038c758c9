//! The WorkOS sandbox behaves like the real Directory Sync API: the official `workos` 3.5.0 crate
//! reads it, errors/limits/pagination/events match workos-api.md, and webhooks arrive signed.

use std::collections::HashSet;
use std::time::Duration;

use dsync::clock::{Clock, SystemClock};
use dsync::signature::{Verifier, DEFAULT_TOLERANCE};
use serde_json::{json, Value};
use workos::directory_sync::{ListGroupsParams, ListUsersParams};
use workos::events::ListEventsParams;
use workos_sandbox::recorder::WebhookRecorder;
use workos_sandbox::{route, Fault, NewUser, Sandbox, SandboxConfig, SeedSpec, UserState, UserUpdate, WebhookConfig};

type Res = Result<(), Box<dyn std::error::Error>>;

const KEY: &str = "sk_test_sandbox_api";
const SECRET: &str = "whsec_sandbox_test";

async fn sandbox(rate_limit: Option<u32>) -> Result<Sandbox, std::io::Error> {
    Sandbox::start(SandboxConfig {
        rate_limit_per_sec: rate_limit,
        ..SandboxConfig::new(KEY)
    })
    .await
}

fn sdk(sb: &Sandbox) -> Result<workos::Client, workos::Error> {
    workos::Client::builder()
        .api_key(KEY)
        .base_url(sb.base_url())
        .max_retries(0)
        .try_build()
}

async fn get(sb: &Sandbox, path_and_query: &str) -> Result<reqwest::Response, reqwest::Error> {
    reqwest::Client::new()
        .get(format!("{}{path_and_query}", sb.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
}

async fn get_json(sb: &Sandbox, path_and_query: &str) -> Result<(u16, Value), Box<dyn std::error::Error>> {
    let resp = get(sb, path_and_query).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

fn is_desc(ids: &[String]) -> bool {
    ids.windows(2).all(|w| w[0] > w[1])
}

#[tokio::test]
async fn official_sdk_reads_the_sandbox() -> Res {
    let sb = sandbox(None).await?;
    let seeded = sb.seed_directory(
        SeedSpec::new("Acme")
            .group("Enterprise Admins", 50)
            .group("Developers", 30)
            .extra_users(25),
    );
    let dir = seeded.directory_id.clone();
    let client = sdk(&sb)?;
    let ds = client.directory_sync();

    // Every user, limit 100: two pages, newest first, each exactly once.
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut params = ListUsersParams {
        directory: Some(dir.clone()),
        limit: Some(100),
        ..Default::default()
    };
    loop {
        let page = ds.list_users(params.clone()).await?;
        pages += 1;
        ids.extend(page.data.iter().map(|u| u.id.clone()));
        match page.list_metadata.after {
            Some(after) => params.after = Some(after),
            None => break,
        }
    }
    assert_eq!((pages, ids.len()), (2, 105));
    assert!(is_desc(&ids));
    let all: HashSet<String> = seeded.user_ids.iter().cloned().collect();
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), all);

    // Small pages, both orders.
    for order in [workos::PaginationOrder::Asc, workos::PaginationOrder::Desc] {
        let mut seen = Vec::new();
        let mut params = ListUsersParams {
            directory: Some(dir.clone()),
            limit: Some(7),
            order: Some(order.clone()),
            ..Default::default()
        };
        loop {
            let page = ds.list_users(params.clone()).await?;
            assert!(page.data.len() <= 7);
            seen.extend(page.data.into_iter().map(|u| u.id));
            match page.list_metadata.after {
                Some(after) => params.after = Some(after),
                None => break,
            }
        }
        assert_eq!(seen.len(), 105, "{order:?}");
        assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), all, "{order:?}");
    }

    // Group filter, and groups.
    let admins = &seeded.groups[0];
    let by_group = ds
        .list_users(ListUsersParams {
            group: Some(admins.id.clone()),
            limit: Some(100),
            ..Default::default()
        })
        .await?;
    assert_eq!(by_group.data.len(), 50);
    assert!(by_group.list_metadata.after.is_none());
    let groups = ds
        .list_groups(ListGroupsParams {
            directory: Some(dir.clone()),
            ..Default::default()
        })
        .await?;
    let mut names: Vec<&str> = groups.data.iter().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Developers", "Enterprise Admins"]);
    let of_user = ds
        .list_groups(ListGroupsParams {
            user: Some(admins.user_ids[0].clone()),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        of_user.data.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        [admins.id.as_str()]
    );
    assert_eq!(ds.get_group(&admins.id).await?.name, "Enterprise Admins");

    // One user, with its (deprecated) groups.
    let uid = &admins.user_ids[3];
    let user = ds.get_user(uid).await?;
    assert_eq!(&user.id, uid);
    assert_eq!(user.directory_id, dir);
    assert_eq!(user.organization_id, seeded.organization_id);
    assert_eq!(user.state.to_string(), "active");
    #[allow(deprecated)]
    let (groups_of_user, emails) = (user.groups.clone(), user.emails.clone().unwrap_or_default());
    assert_eq!(
        groups_of_user.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        [admins.id.as_str()]
    );
    assert_eq!(emails.first().and_then(|e| e.value.clone()), user.email);

    // Directories.
    let d = ds.get_directory(&dir).await?;
    assert_eq!(
        (d.name.as_str(), d.state.to_string(), d.type_.to_string()),
        ("Acme", "linked".into(), "okta scim v2.0".into())
    );
    assert_eq!(d.metadata.map(|m| (m.users.active, m.groups)), Some((105, 2)));
    assert_eq!(ds.list_directories(Default::default()).await?.data.len(), 1);

    // A missing user is a typed 404.
    let err = ds
        .get_user("directory_user_01SANDBOX99999999999999999")
        .await
        .err()
        .ok_or("expected an error")?;
    let api = err.api().ok_or("expected an API error")?;
    assert_eq!((api.status, api.message.as_str()), (404, "Not Found"));
    assert!(api.request_id.is_some(), "X-Request-ID surfaces in the SDK error");
    // …and so is a deleted one.
    sb.delete_user(uid)?;
    let err = ds.get_user(uid).await.err().ok_or("expected an error")?;
    assert_eq!(err.api().map(|a| a.status), Some(404));

    // Events through the SDK: oldest first, whatever `order` it sends.
    let mut events = Vec::new();
    let mut params = ListEventsParams::new(vec!["dsync.user.created".into(), "dsync.user.deleted".into()]);
    params.limit = Some(100);
    loop {
        let page = client.events().list_events(params.clone()).await?;
        events.extend(page.data);
        match page.list_metadata.after {
            Some(after) => params.after = Some(after),
            None => break,
        }
    }
    assert_eq!(events.len(), 106);
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("dsync.user.deleted"));
    assert_eq!(sb.calls(route::GET_USER), 3);
    assert_eq!(sb.calls_with_status(route::GET_USER, 404), 2);
    Ok(())
}

#[tokio::test]
async fn unauthorized_without_a_valid_key() -> Res {
    let sb = sandbox(Some(4)).await?;
    let http = reqwest::Client::new();
    for req in [
        http.get(format!("{}/directories", sb.base_url())),
        http.get(format!("{}/directory_users?directory=x", sb.base_url()))
            .bearer_auth("sk_wrong"),
        http.get(format!("{}/events?events=dsync.user.created", sb.base_url()))
            .header("authorization", KEY),
    ] {
        let resp = req.send().await?;
        assert_eq!(resp.status().as_u16(), 401);
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(resp.json::<Value>().await?, json!({"message": "Unauthorized"}));
    }
    assert_eq!(sb.calls_with_status(route::LIST_DIRECTORIES, 401), 1);
    Ok(())
}

#[tokio::test]
async fn validation_errors_match_the_recorded_bodies() -> Res {
    let sb = sandbox(Some(4)).await?;
    let code = "Please provide either \"directory\" or \"group\" parameters.";
    let (status, body) = get_json(&sb, "/directory_users").await?;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"message": "Validation failed", "errors": [{"field": "directory", "code": code}, {"field": "group", "code": code}]})
    );
    let (status, body) = get_json(&sb, "/directory_groups?limit=5").await?;
    assert_eq!((status, body["errors"][1]["field"].as_str()), (422, Some("user")));
    let (status, body) = get_json(&sb, "/events").await?;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "invalid_events_request");
    for bad in ["0", "101", "x"] {
        let (status, body) = get_json(&sb, &format!("/directory_groups?directory=d&limit={bad}")).await?;
        assert_eq!(
            (status, body["errors"][0]["field"].as_str()),
            (422, Some("limit")),
            "limit={bad}"
        );
    }
    let (status, body) = get_json(&sb, "/directory_groups/directory_group_nope").await?;
    assert_eq!((status, body), (404, json!({"message": "Not Found"})));
    Ok(())
}

#[tokio::test]
async fn directory_users_are_rate_limited_per_directory() -> Res {
    let sb = sandbox(Some(4)).await?;
    let a = sb.seed_directory(SeedSpec::new("A").group("G", 3));
    let b = sb.seed_directory(SeedSpec::new("B").group("G", 3));
    let list_a = format!("/directory_users?directory={}", a.directory_id);
    for i in 0..4 {
        assert_eq!(get(&sb, &list_a).await?.status().as_u16(), 200, "request {i}");
    }
    let resp = get(&sb, &list_a).await?;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(resp.json::<Value>().await?, json!("Ratelimited"));
    // The group filter and get-by-id count against the same directory…
    assert_eq!(
        get(&sb, &format!("/directory_users?group={}", a.groups[0].id))
            .await?
            .status()
            .as_u16(),
        429
    );
    assert_eq!(
        get(&sb, &format!("/directory_users/{}", a.user_ids[0]))
            .await?
            .status()
            .as_u16(),
        429
    );
    // …while another directory, and other endpoints, are unaffected.
    assert_eq!(
        get(&sb, &format!("/directory_users?directory={}", b.directory_id))
            .await?
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        get(&sb, &format!("/directory_users/{}", b.user_ids[0]))
            .await?
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        get(&sb, &format!("/directory_groups?directory={}", a.directory_id))
            .await?
            .status()
            .as_u16(),
        200
    );
    assert_eq!(sb.calls_with_status(route::LIST_USERS, 429), 2);

    // The SDK sees the 429 with its Retry-After.
    let err = sdk(&sb)?
        .directory_sync()
        .list_users(ListUsersParams {
            directory: Some(a.directory_id.clone()),
            ..Default::default()
        })
        .await
        .err()
        .ok_or("expected 429")?;
    let api = err.api().ok_or("expected an API error")?;
    assert_eq!((api.status, api.retry_after), (429, Some(Duration::from_secs(1))));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&sb, &list_a).await?.status().as_u16(), 200, "the window rolled");
    Ok(())
}

#[tokio::test]
async fn events_are_oldest_first_with_an_after_cursor() -> Res {
    let sb = sandbox(None).await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 4).extra_users(1));
    let gid = &seeded.groups[0].id;
    sb.rename_group(gid, "Platform Admins")?;
    sb.update_user(
        &seeded.extra_user_ids[0],
        UserUpdate {
            first_name: Some("Renamed".into()),
            ..Default::default()
        },
    )?;
    sb.remove_member(&seeded.groups[0].user_ids[0], gid)?;

    let names = "dsync.user.created,dsync.group.updated,dsync.user.updated,dsync.group.user_removed";
    let mut ids = Vec::new();
    let mut kinds = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after.as_ref().map(|a| format!("&after={a}")).unwrap_or_default();
        let (status, body) = get_json(&sb, &format!("/events?events={names}&limit=2&order=desc{cursor}")).await?;
        assert_eq!(status, 200);
        assert_eq!(body["object"], "list");
        let meta = body["list_metadata"].as_object().ok_or("list_metadata")?;
        assert_eq!(
            meta.keys().collect::<Vec<_>>(),
            ["after"],
            "only `after` in events list_metadata"
        );
        for e in body["data"].as_array().ok_or("data")? {
            assert_eq!(e["object"], "event");
            ids.push(e["id"].as_str().ok_or("id")?.to_owned());
            kinds.push(e["event"].as_str().ok_or("event")?.to_owned());
        }
        match meta["after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => break,
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert_eq!(kinds.len(), 8);
    assert_eq!(
        &kinds[5..],
        ["dsync.group.updated", "dsync.user.updated", "dsync.group.user_removed"]
    );
    let (_, upd) = get_json(&sb, "/events?events=dsync.group.updated").await?;
    assert_eq!(upd["data"][0]["data"]["previous_attributes"], json!({"name": "Admins"}));

    // Repeated `events=` works like the comma-joined form; the cursor skips what was seen.
    let (_, repeated) = get_json(
        &sb,
        &format!(
            "/events?events=dsync.user.created&events=dsync.group.user_removed&after={}",
            ids[2]
        ),
    )
    .await?;
    let got: Vec<&str> = repeated["data"]
        .as_array()
        .ok_or("data")?
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert_eq!(
        got,
        ["dsync.user.created", "dsync.user.created", "dsync.group.user_removed"]
    );
    assert_eq!(repeated["list_metadata"]["after"], Value::Null);
    Ok(())
}

#[tokio::test]
async fn faults_outage_and_stats() -> Res {
    let sb = sandbox(None).await?;
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("G", 2));
    let user_path = format!("/directory_users/{}", seeded.user_ids[0]);

    sb.inject(route::GET_USER, 2, Fault::status(503));
    let (status, body) = get_json(&sb, &user_path).await?;
    assert_eq!((status, body), (503, json!({"message": "Service Unavailable"})));
    assert_eq!(get(&sb, &user_path).await?.status().as_u16(), 503);
    assert_eq!(get(&sb, &user_path).await?.status().as_u16(), 200);

    sb.inject(route::LIST_GROUPS, 1, Fault::rate_limited(7));
    let resp = get(&sb, &format!("/directory_groups?directory={}", seeded.directory_id)).await?;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7")
    );

    // Over HTTP: arm a 500, then an outage.
    let http = reqwest::Client::new();
    let faults = format!("{}/_sandbox/faults", sb.base_url());
    let armed = http
        .post(&faults)
        .json(&json!({"route": "GET /events", "times": 1, "status": 500}))
        .send()
        .await?;
    assert_eq!(armed.status().as_u16(), 200);
    assert_eq!(
        get(&sb, "/events?events=dsync.user.created").await?.status().as_u16(),
        500
    );
    http.post(&faults).json(&json!({"outage": true})).send().await?;
    for path in ["/directories", "/events?events=dsync.user.created", user_path.as_str()] {
        assert_eq!(get(&sb, path).await?.status().as_u16(), 503, "{path}");
    }
    http.delete(&faults).send().await?;
    assert_eq!(get(&sb, "/directories").await?.status().as_u16(), 200);

    assert_eq!(sb.calls_with_status(route::GET_USER, 503), 3);
    assert_eq!(sb.calls_with_status(route::GET_USER, 200), 1);
    let stats: Value = http
        .get(format!("{}/_sandbox/stats", sb.base_url()))
        .send()
        .await?
        .json()
        .await?;
    let row = stats["calls"]
        .as_array()
        .ok_or("calls")?
        .iter()
        .find(|r| r["route"] == "GET /events" && r["status"] == 500)
        .ok_or("GET /events 500 row")?;
    assert_eq!(row["count"], 1);
    sb.reset_calls();
    assert_eq!(sb.calls(route::GET_USER), 0);
    Ok(())
}

#[tokio::test]
async fn admin_http_mutations_record_events() -> Res {
    let sb = sandbox(None).await?;
    let http = reqwest::Client::new();
    let base = sb.base_url();
    let seeded: Value = http
        .post(format!("{base}/_sandbox/seed"))
        .json(&json!({"name": "Globex", "groups": [{"name": "Ops", "users": 2}], "extra_users": 1}))
        .send()
        .await?
        .json()
        .await?;
    let dir = seeded["directory_id"].as_str().ok_or("directory_id")?;
    let gid = seeded["groups"][0]["id"].as_str().ok_or("group id")?;
    let extra = seeded["extra_user_ids"][0].as_str().ok_or("extra user")?;

    let created = http
        .post(format!("{base}/_sandbox/directories/{dir}/users"))
        .json(&json!({"email": "new@globex.test", "first_name": "New", "last_name": "Hire"}))
        .send()
        .await?;
    assert_eq!(created.status().as_u16(), 201);
    let new_id = created.json::<Value>().await?["id"].as_str().ok_or("id")?.to_owned();
    let patched = http
        .patch(format!("{base}/_sandbox/users/{new_id}"))
        .json(&json!({"state": "inactive"}))
        .send()
        .await?
        .json::<Value>()
        .await?;
    assert_eq!(patched["state"], "inactive");
    assert_eq!(
        http.put(format!("{base}/_sandbox/groups/{gid}/users/{extra}"))
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        http.delete(format!("{base}/_sandbox/groups/{gid}"))
            .send()
            .await?
            .status()
            .as_u16(),
        204
    );
    assert_eq!(
        http.delete(format!("{base}/_sandbox/users/missing"))
            .send()
            .await?
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        http.delete(format!("{base}/_sandbox/directories/{dir}"))
            .send()
            .await?
            .status()
            .as_u16(),
        204
    );

    let kinds: Vec<String> = sb.events().into_iter().map(|e| e.event).collect();
    assert_eq!(
        &kinds[kinds.len() - 5..],
        [
            "dsync.user.created",
            "dsync.user.updated",
            "dsync.group.user_added",
            "dsync.group.deleted",
            "dsync.deleted"
        ]
    );
    assert_eq!(get(&sb, &format!("/directories/{dir}")).await?.status().as_u16(), 404);
    Ok(())
}

#[tokio::test]
async fn webhooks_are_signed_and_delivery_switches_work() -> Res {
    let rx = WebhookRecorder::start().await?;
    let sb = Sandbox::start(SandboxConfig {
        webhook: Some(WebhookConfig::new(rx.url(), SECRET).retries(2, Duration::from_millis(10))),
        ..SandboxConfig::new(KEY)
    })
    .await?;
    let wait = Duration::from_secs(5);
    let verifier = Verifier::new([SECRET], DEFAULT_TOLERANCE)?;

    // Normal delivery: every event once, in order, signed over the exact body.
    let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Admins", 2));
    assert!(sb.wait_deliveries(wait).await);
    let got = rx.received();
    let recorded: Vec<String> = sb.events().into_iter().map(|e| e.id).collect();
    assert_eq!(rx.event_ids(), recorded);
    for r in &got {
        assert!(verifier.verify_headers(&r.headers, &r.body, SystemClock.now()).is_ok());
        assert!(r
            .signature()
            .is_some_and(|s| s.starts_with("t=") && s.contains(", v1=")));
        assert_eq!(
            r.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
    assert!(Verifier::new(["whsec_other"], DEFAULT_TOLERANCE)?
        .verify_headers(&got[0].headers, &got[0].body, SystemClock.now())
        .is_err());
    rx.clear();

    // Duplicate: the same event id twice, each copy signed.
    sb.update_delivery(|m| m.duplicate = 2);
    let u1 = sb.create_user(&seeded.directory_id, NewUser::new("dup@acme.test"))?;
    assert!(sb.wait_deliveries(wait).await);
    let dup = rx.received();
    assert_eq!(dup.len(), 2);
    assert_eq!(dup[0].event_id(), dup[1].event_id());
    assert_eq!(dup[0].json().map(|v| v["data"]["id"].clone()), Some(json!(u1)));
    assert!(dup
        .iter()
        .all(|r| verifier.verify_headers(&r.headers, &r.body, SystemClock.now()).is_ok()));
    rx.clear();

    // Drop: recorded (and listed by /events) but never delivered.
    sb.update_delivery(|m| {
        m.duplicate = 1;
        m.drop = true;
    });
    sb.set_user_state(&u1, UserState::Inactive)?;
    assert!(sb.wait_deliveries(wait).await);
    let dropped = sb.dropped_deliveries();
    assert_eq!(dropped.len(), 1);
    assert!(rx.received().is_empty());
    let (_, listed) = get_json(&sb, "/events?events=dsync.user.updated").await?;
    assert_eq!(listed["data"][0]["id"].as_str(), dropped.first().map(String::as_str));

    // Reorder: held until flushed, then delivered newest first.
    sb.update_delivery(|m| {
        m.drop = false;
        m.reorder = true;
    });
    for i in 0..3 {
        sb.create_user(&seeded.directory_id, NewUser::new(format!("r{i}@acme.test")))?;
    }
    assert!(sb.wait_deliveries(wait).await);
    assert_eq!(sb.held_deliveries(), 3);
    assert!(rx.received().is_empty());
    sb.flush_deliveries();
    assert!(sb.wait_deliveries(wait).await);
    let ids = rx.event_ids();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "reversed: {ids:?}");
    rx.clear();

    // Pause: held until resumed, then in order.
    sb.update_delivery(|m| {
        m.reorder = false;
        m.paused = true;
    });
    sb.rename_group(&seeded.groups[0].id, "Platform Admins")?;
    sb.delete_group(&seeded.groups[0].id)?;
    assert!(sb.wait_deliveries(wait).await);
    assert!(rx.received().is_empty());
    sb.update_delivery(|m| m.paused = false);
    assert!(sb.wait_deliveries(wait).await);
    let kinds: Vec<String> = rx.received().iter().filter_map(|r| r.event_type()).collect();
    assert_eq!(kinds, ["dsync.group.updated", "dsync.group.deleted"]);
    rx.clear();

    // A non-2xx answer is retried.
    sb.clear_deliveries();
    rx.fail_next(1, 500);
    sb.delete_user(&u1)?;
    assert!(sb.wait_deliveries(wait).await);
    let attempts: Vec<(u32, Option<u16>)> = sb.deliveries().iter().map(|d| (d.attempt, d.status)).collect();
    assert_eq!(attempts, [(1, Some(500)), (2, Some(200))]);
    assert_eq!(rx.received().len(), 2);
    Ok(())
}
