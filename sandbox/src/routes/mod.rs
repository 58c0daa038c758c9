//! The HTTP surface: the WorkOS read API, the `/_sandbox` admin API, and the middleware that
//! authenticates, counts, injects faults and stamps `X-Request-ID`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::faults::Fault;
use crate::pagination::{InvalidParam, Page};
use crate::{lock, route, Shared};

mod admin;
mod api;

pub(crate) type App = Arc<Shared>;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub(crate) fn router(shared: App) -> Router {
    let path = |r: &'static str| r.split_once(' ').map_or(r, |(_, p)| p);
    let api = Router::new()
        .route(path(route::LIST_DIRECTORIES), get(api::list_directories))
        .route(path(route::GET_DIRECTORY), get(api::get_directory))
        .route(path(route::LIST_USERS), get(api::list_users))
        .route(path(route::GET_USER), get(api::get_user))
        .route(path(route::LIST_GROUPS), get(api::list_groups))
        .route(path(route::GET_GROUP), get(api::get_group))
        .route(path(route::LIST_EVENTS), get(api::list_events))
        .route_layer(from_fn_with_state(Arc::clone(&shared), gate));
    api.merge(admin::router())
        .fallback(|| async { message(StatusCode::NOT_FOUND, "Not Found") })
        .layer(from_fn_with_state(Arc::clone(&shared), request_id))
        .with_state(shared)
}

// ---- middleware ---------------------------------------------------------------------------------

/// API routes only: outage → 503, bad key → 401, armed fault → its answer, else the handler.
/// Every outcome is counted under the route template.
async fn gate(State(app): State<App>, req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |m| m.as_str().to_owned());
    let route = format!("{} {}", req.method(), template);
    let outage = lock(&app.faults).outage();
    let resp = if outage {
        message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
    } else if !authorized(&app, &req) {
        message(StatusCode::UNAUTHORIZED, "Unauthorized")
    } else if !lock(&app.key_limiter).check("key", std::time::Instant::now()) {
        rate_limited(crate::ratelimit::RETRY_AFTER_SECS)
    } else {
        let fault = lock(&app.faults).take(&route);
        match fault {
            Some(f) => fault_response(f),
            None => next.run(req).await,
        }
    };
    lock(&app.stats).record(&route, resp.status().as_u16());
    resp
}

fn authorized(app: &Shared, req: &Request) -> bool {
    let Some(value) = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = value.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    let key = parts.next().unwrap_or_default().trim();
    scheme.eq_ignore_ascii_case("bearer") && !key.is_empty() && *key == *crate::lock(&app.api_key)
}

/// Every response carries an `X-Request-ID`.
async fn request_id(State(app): State<App>, req: Request, next: Next) -> Response {
    let n = app.request_seq.fetch_add(1, Ordering::Relaxed) + 1;
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&format!("req_01SANDBOX{n:017}")) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    resp
}

// ---- responses ----------------------------------------------------------------------------------

pub(crate) fn respond(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// `{"message": …}`, the plain WorkOS error body.
pub(crate) fn message(status: StatusCode, msg: &str) -> Response {
    respond(status, json!({ "message": msg }))
}

pub(crate) fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "Not Found")
}

/// 429 as `/directory_users` answers it: body `"Ratelimited"`, `Retry-After` in seconds.
pub(crate) fn rate_limited(retry_after_secs: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(RETRY_AFTER, retry_after_secs.to_string())],
        Json("Ratelimited"),
    )
        .into_response()
}

/// 422 `{"message":"Validation failed","errors":[{field, code}…]}`.
pub(crate) fn validation_failed(errors: &[(&str, &str)]) -> Response {
    let errors: Vec<Value> = errors
        .iter()
        .map(|(field, code)| json!({ "field": field, "code": code }))
        .collect();
    respond(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({ "message": "Validation failed", "errors": errors }),
    )
}

pub(crate) fn invalid_param(e: &InvalidParam) -> Response {
    validation_failed(&[(e.field, &e.code)])
}

fn fault_response(f: Fault) -> Response {
    match f {
        Fault::RateLimited { retry_after_secs } => rate_limited(retry_after_secs),
        Fault::Error { status, message: msg } => message(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &msg,
        ),
    }
}

/// The list envelope.
pub(crate) fn list(page: Page<Value>) -> Response {
    respond(
        StatusCode::OK,
        json!({
            "object": "list",
            "data": page.data,
            "list_metadata": { "before": page.before, "after": page.after },
        }),
    )
}

// ---- query parameters ---------------------------------------------------------------------------

/// All query pairs, repeated keys kept. Empty values count as absent.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
            Ok(Query(pairs)) => Ok(Params(pairs)),
            Err(e) => Err(message(StatusCode::BAD_REQUEST, &format!("invalid query string: {e}"))),
        }
    }
}
