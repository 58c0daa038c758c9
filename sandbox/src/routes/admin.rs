//! `/_sandbox/…`: mutations, the call counter, fault injection and delivery switches over HTTP.
//! No API key needed. Bodies are JSON; errors are `{"message": …}`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{message, respond, App};
use crate::delivery::WebhookConfig;
use crate::error::SandboxError;
use crate::faults::Fault;
use crate::model::UserState;
use crate::state::{NewUser, SeedSpec, UserUpdate};
use crate::{lock, Shared};

pub(super) fn router() -> Router<App> {
    Router::new()
        .route("/_sandbox/seed", post(seed))
        .route("/_sandbox/scale/seed", post(scale_seed))
        .route("/_sandbox/scale/churn", post(scale_churn))
        .route("/_sandbox/scale/burst", post(scale_burst))
        .route("/_sandbox/directories/{id}", delete(delete_directory))
        .route("/_sandbox/directories/{id}/users", post(create_user))
        .route("/_sandbox/directories/{id}/groups", post(create_group))
        .route("/_sandbox/users/{id}", patch(update_user).delete(delete_user))
        .route("/_sandbox/groups/{id}", patch(rename_group).delete(delete_group))
        .route(
            "/_sandbox/groups/{gid}/users/{uid}",
            put(add_member).delete(remove_member),
        )
        .route("/_sandbox/events", get(all_events))
        .route("/_sandbox/stats", get(stats).delete(reset_stats))
        .route("/_sandbox/faults", get(faults).post(set_faults).delete(clear_faults))
        .route("/_sandbox/rate_limit", post(set_rate_limit))
        .route("/_sandbox/delivery", get(delivery).post(set_delivery))
}

/// Parse a JSON body; an empty body reads as `{}`.
fn parse_body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, serde_json::Error> {
    let raw: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(raw)
}

fn error(e: &SandboxError) -> Response {
    let status = match e {
        SandboxError::NotFound(_) => StatusCode::NOT_FOUND,
        SandboxError::Conflict(_) => StatusCode::CONFLICT,
        SandboxError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    message(status, &e.to_string())
}

fn user_json(app: &Shared, id: &str) -> Response {
    let store = lock(&app.store);
    match store.user(id) {
        Some(u) => respond(StatusCode::OK, store.user_json(u)),
        None => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn group_json(app: &Shared, id: &str, status: StatusCode) -> Response {
    match lock(&app.store).group(id) {
        Some(g) => respond(status, g.to_json()),
        None => message(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The parsed JSON body, or return 400 `{"message": …}`.
macro_rules! json_body {
    ($raw:expr) => {
        match parse_body(&$raw) {
            Ok(v) => v,
            Err(e) => return message(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")),
        }
    };
}

async fn seed(State(app): State<App>, raw: Bytes) -> Response {
    let spec: SeedSpec = json_body!(raw);
    let seeded = app.mutate(|s, now| s.seed(&spec, now));
    respond(StatusCode::CREATED, json!(seeded))
}

/// A large directory, without events (benchmarks): `ScaleSpec`.
async fn scale_seed(State(app): State<App>, raw: Bytes) -> Response {
    let spec: crate::state::ScaleSpec = json_body!(raw);
    let seeded = app.mutate(|s, now| s.seed_scale(&spec, now));
    respond(StatusCode::CREATED, json!(seeded))
}

#[derive(serde::Deserialize)]
struct Churn {
    directory: String,
    /// Memberships to change: half removed, half added.
    memberships: usize,
    seed: u64,
}

/// Change memberships of a directory at random, recording their events (benchmarks).
async fn scale_churn(State(app): State<App>, raw: Bytes) -> Response {
    let c: Churn = json_body!(raw);
    let changed = app.mutate(|s, now| s.churn(&c.directory, c.memberships, c.seed, now));
    respond(StatusCode::OK, json!({ "changed": changed }))
}

#[derive(serde::Deserialize)]
struct Burst {
    directory: String,
    group: String,
    users: usize,
}

/// An onboarding burst: `users` new users, each added to `group` (2 events per user).
async fn scale_burst(State(app): State<App>, raw: Bytes) -> Response {
    let b: Burst = json_body!(raw);
    match app.mutate(|s, now| s.burst(&b.directory, &b.group, b.users, now)) {
        Ok(ids) => respond(StatusCode::OK, json!({ "user_ids": ids })),
        Err(e) => error(&e),
    }
}

async fn delete_directory(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.mutate(|s, now| s.delete_directory(&id, now)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(&e),
    }
}

async fn create_user(State(app): State<App>, Path(dir): Path<String>, raw: Bytes) -> Response {
    let new: NewUser = json_body!(raw);
    match app.mutate(|s, now| s.create_user(&dir, &new, now)) {
        Ok(id) => {
            let mut r = user_json(&app, &id);
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct UserPatch {
    #[serde(flatten)]
    update: UserUpdate,
    #[serde(default)]
    state: Option<String>,
}

async fn update_user(State(app): State<App>, Path(id): Path<String>, raw: Bytes) -> Response {
    let patch: UserPatch = json_body!(raw);
    let state = match patch.state.as_deref().map(UserState::parse) {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => {
            return message(
                StatusCode::UNPROCESSABLE_ENTITY,
                "state must be \"active\" or \"inactive\"",
            )
        }
    };
    let result = app.mutate(|s, now| {
        s.update_user(&id, &patch.update, now)?;
        match state {
            Some(st) => s.set_user_state(&id, st, now).map(|_| ()),
            None => Ok(()),
        }
    });
    match result {
        Ok(()) => user_json(&app, &id),
        Err(e) => error(&e),
    }
}

async fn delete_user(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.mutate(|s, now| s.delete_user(&id, now)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
struct GroupBody {
    name: String,
}

async fn create_group(State(app): State<App>, Path(dir): Path<String>, raw: Bytes) -> Response {
    let b: GroupBody = json_body!(raw);
    match app.mutate(|s, now| s.create_group(&dir, &b.name, now)) {
        Ok(id) => group_json(&app, &id, StatusCode::CREATED),
        Err(e) => error(&e),
    }
}

async fn rename_group(State(app): State<App>, Path(id): Path<String>, raw: Bytes) -> Response {
    let b: GroupBody = json_body!(raw);
    match app.mutate(|s, now| s.rename_group(&id, &b.name, now)) {
        Ok(_) => group_json(&app, &id, StatusCode::OK),
        Err(e) => error(&e),
    }
}

async fn delete_group(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.mutate(|s, now| s.delete_group(&id, now)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(&e),
    }
}

async fn add_member(State(app): State<App>, Path((gid, uid)): Path<(String, String)>) -> Response {
    match app.mutate(|s, now| s.add_member(&uid, &gid, now)) {
        Ok(changed) => respond(StatusCode::OK, json!({ "added": changed })),
        Err(e) => error(&e),
    }
}

async fn remove_member(State(app): State<App>, Path((gid, uid)): Path<(String, String)>) -> Response {
    match app.mutate(|s, now| s.remove_member(&uid, &gid, now)) {
        Ok(changed) => respond(StatusCode::OK, json!({ "removed": changed })),
        Err(e) => error(&e),
    }
}

async fn all_events(State(app): State<App>) -> Response {
    let data: Vec<Value> = lock(&app.store).events().iter().map(|e| e.to_json()).collect();
    respond(StatusCode::OK, json!({ "data": data }))
}

async fn stats(State(app): State<App>) -> Response {
    let stats = lock(&app.stats);
    respond(StatusCode::OK, json!({ "total": stats.total(), "calls": stats.rows() }))
}

async fn reset_stats(State(app): State<App>) -> Response {
    lock(&app.stats).reset();
    StatusCode::NO_CONTENT.into_response()
}

fn faults_json(app: &Shared) -> Response {
    let f = lock(&app.faults);
    let pending: Vec<Value> = f
        .pending()
        .into_iter()
        .map(|(route, remaining)| json!({ "route": route, "remaining": remaining }))
        .collect();
    respond(StatusCode::OK, json!({ "outage": f.outage(), "pending": pending }))
}

async fn faults(State(app): State<App>) -> Response {
    faults_json(&app)
}

/// `{"route": "GET /directory_users", "times": 2, "status": 503, "message"?: …, "retry_after"?: 1}`
/// arms a fault; `{"outage": true|false}` flips the outage switch. Both may be given.
#[derive(Deserialize, Default)]
#[serde(default)]
struct FaultBody {
    route: Option<String>,
    times: Option<u32>,
    status: Option<u16>,
    message: Option<String>,
    retry_after: Option<u64>,
    outage: Option<bool>,
}

async fn set_faults(State(app): State<App>, raw: Bytes) -> Response {
    let b: FaultBody = json_body!(raw);
    if let Some(route) = &b.route {
        let fault = match b.status {
            Some(429) => Fault::rate_limited(b.retry_after.unwrap_or(1)),
            Some(s) if (400..=599).contains(&s) => match &b.message {
                Some(m) => Fault::Error {
                    status: s,
                    message: m.clone(),
                },
                None => Fault::status(s),
            },
            _ => {
                return message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "status must be 429 or another 4xx/5xx code",
                )
            }
        };
        lock(&app.faults).inject(route, b.times.unwrap_or(1), fault);
    }
    if let Some(on) = b.outage {
        lock(&app.faults).set_outage(on);
    }
    faults_json(&app)
}

async fn clear_faults(State(app): State<App>) -> Response {
    lock(&app.faults).clear();
    StatusCode::NO_CONTENT.into_response()
}

/// `{"per_sec": 4}` or `{"per_sec": null}` to disable; `"reset": true` forgets recent requests.
#[derive(Deserialize)]
struct RateLimitBody {
    per_sec: Option<u32>,
    #[serde(default)]
    reset: bool,
}

async fn set_rate_limit(State(app): State<App>, raw: Bytes) -> Response {
    let b: RateLimitBody = json_body!(raw);
    let mut limiter = lock(&app.limiter);
    limiter.set_limit(b.per_sec);
    if b.reset {
        limiter.reset();
    }
    respond(StatusCode::OK, json!({ "per_sec": limiter.limit() }))
}

fn delivery_json(app: &Shared) -> Response {
    let d = &app.delivery;
    respond(
        StatusCode::OK,
        json!({ "mode": d.mode(), "held": d.held(), "records": d.records(), "dropped": d.dropped() }),
    )
}

async fn delivery(State(app): State<App>) -> Response {
    delivery_json(&app)
}

/// Partial update of the switches, then optionally a flush:
/// `{"duplicate"?, "delay_ms"?, "reorder"?, "drop"?, "paused"?, "flush"?, "clear"?,
///   "webhook_url"?, "webhook_secret"?}`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct DeliveryBody {
    duplicate: Option<u32>,
    delay_ms: Option<u64>,
    reorder: Option<bool>,
    drop: Option<bool>,
    paused: Option<bool>,
    flush: bool,
    clear: bool,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
}

async fn set_delivery(State(app): State<App>, raw: Bytes) -> Response {
    let b: DeliveryBody = json_body!(raw);
    let d = &app.delivery;
    if b.webhook_url.is_some() || b.webhook_secret.is_some() {
        let mut hook = d.webhook().unwrap_or_else(|| WebhookConfig::new("", ""));
        if let Some(url) = b.webhook_url {
            hook.url = url;
        }
        if let Some(secret) = b.webhook_secret {
            hook.secret = secret;
        }
        d.set_webhook(Some(hook));
    }
    let mut mode = d.mode();
    mode.duplicate = b.duplicate.unwrap_or(mode.duplicate);
    mode.delay = b.delay_ms.map_or(mode.delay, Duration::from_millis);
    mode.reorder = b.reorder.unwrap_or(mode.reorder);
    mode.drop = b.drop.unwrap_or(mode.drop);
    mode.paused = b.paused.unwrap_or(mode.paused);
    d.set_mode(mode);
    if b.flush {
        d.flush();
    }
    if b.clear {
        d.clear();
    }
    delivery_json(&app)
}
