//! The WorkOS Directory Sync read API and `GET /events` (workos-api.md §3, §5).

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::{invalid_param, list, not_found, rate_limited, respond, validation_failed, App, Params};
use crate::events::EventQuery;
use crate::model::{parse_iso, User};
use crate::pagination::{paginate, parse_limit, InvalidParam, PageParams};
use crate::ratelimit::RETRY_AFTER_SECS;
use crate::{lock, Shared};

const USERS_FILTER_CODE: &str = "Please provide either \"directory\" or \"group\" parameters.";
const GROUPS_FILTER_CODE: &str = "Please provide either \"directory\" or \"user\" parameters.";
const EVENTS_REQUIRED: &str =
    "One or more event names (e.g. dsync.user.created) must be provided using the events parameter.";

fn page_params(q: &Params) -> Result<PageParams, InvalidParam> {
    PageParams::parse(q.get("limit"), q.get("after"), q.get("before"), q.get("order"))
}

/// The `/directory_users` limit, keyed by directory: `true` if this request may proceed.
fn user_limit_allows(app: &Shared, directory_id: &str) -> bool {
    lock(&app.limiter).check(directory_id, Instant::now())
}

pub(super) async fn list_directories(State(app): State<App>, q: Params) -> Response {
    let p = match page_params(&q) {
        Ok(p) => p,
        Err(e) => return invalid_param(&e),
    };
    let (org, search, domain) = (
        q.get("organization_id"),
        q.get("search").map(str::to_lowercase),
        q.get("domain"),
    );
    let store = lock(&app.store);
    let dirs: Vec<_> = store
        .directories
        .values()
        .filter(|d| org.is_none_or(|o| d.organization_id == o))
        .filter(|d| search.as_deref().is_none_or(|s| d.name.to_lowercase().contains(s)))
        .filter(|d| domain.is_none_or(|dm| d.domain.eq_ignore_ascii_case(dm)))
        .collect();
    let page = paginate(&dirs, |d| d.id.as_str(), &p);
    list(crate::pagination::Page {
        data: page.data.iter().map(|d| d.to_json(store.counts(&d.id))).collect(),
        before: page.before,
        after: page.after,
    })
}

pub(super) async fn get_directory(State(app): State<App>, Path(id): Path<String>) -> Response {
    let store = lock(&app.store);
    match store.directory(&id) {
        Some(d) => respond(StatusCode::OK, d.to_json(store.counts(&d.id))),
        None => not_found(),
    }
}

pub(super) async fn list_users(State(app): State<App>, q: Params) -> Response {
    let (directory, group) = (q.get("directory"), q.get("group"));
    if directory.is_none() && group.is_none() {
        return validation_failed(&[("directory", USERS_FILTER_CODE), ("group", USERS_FILTER_CODE)]);
    }
    let p = match page_params(&q) {
        Ok(p) => p,
        Err(e) => return invalid_param(&e),
    };
    let limit_key = match (directory, group) {
        (Some(d), _) => d.to_owned(),
        (None, Some(g)) => lock(&app.store)
            .group(g)
            .map_or_else(|| g.to_owned(), |g| g.directory_id.clone()),
        (None, None) => String::new(),
    };
    if !user_limit_allows(&app, &limit_key) {
        return rate_limited(RETRY_AFTER_SECS);
    }
    let (idp_id, email) = (q.get("idp_id"), q.get("email"));
    let store = lock(&app.store);
    // A group that does not exist (deleted meanwhile) is a 404, as for the group itself.
    if group.is_some_and(|g| store.group(g).is_none()) {
        return not_found();
    }
    let users: Vec<&User> = match group {
        Some(g) => store.members_of(g),
        None => store.users.values().collect(),
    }
    .into_iter()
    .filter(|u| directory.is_none_or(|d| u.directory_id == d))
    .filter(|u| idp_id.is_none_or(|i| u.idp_id == i))
    .filter(|u| email.is_none_or(|e| u.email.eq_ignore_ascii_case(e)))
    .collect();
    let page = paginate(&users, |u| u.id.as_str(), &p);
    list(crate::pagination::Page {
        data: page.data.iter().map(|u| store.user_json(u)).collect(),
        before: page.before,
        after: page.after,
    })
}

pub(super) async fn get_user(State(app): State<App>, Path(id): Path<String>) -> Response {
    let directory = lock(&app.store).user(&id).map(|u| u.directory_id.clone());
    let Some(directory) = directory else {
        return not_found();
    };
    if !user_limit_allows(&app, &directory) {
        return rate_limited(RETRY_AFTER_SECS);
    }
    let store = lock(&app.store);
    match store.user(&id) {
        Some(u) => respond(StatusCode::OK, store.user_json(u)),
        None => not_found(),
    }
}

pub(super) async fn list_groups(State(app): State<App>, q: Params) -> Response {
    let (directory, user) = (q.get("directory"), q.get("user"));
    if directory.is_none() && user.is_none() {
        return validation_failed(&[("directory", GROUPS_FILTER_CODE), ("user", GROUPS_FILTER_CODE)]);
    }
    let p = match page_params(&q) {
        Ok(p) => p,
        Err(e) => return invalid_param(&e),
    };
    let store = lock(&app.store);
    if user.is_some_and(|u| store.user(u).is_none()) {
        return not_found();
    }
    let groups: Vec<_> = match user {
        Some(u) => store.groups_of(u),
        None => store.groups.values().collect(),
    }
    .into_iter()
    .filter(|g| directory.is_none_or(|d| g.directory_id == d))
    .collect();
    let page = paginate(&groups, |g| g.id.as_str(), &p);
    list(crate::pagination::Page {
        data: page.data.iter().map(|g| g.to_json()).collect(),
        before: page.before,
        after: page.after,
    })
}

pub(super) async fn get_group(State(app): State<App>, Path(id): Path<String>) -> Response {
    match lock(&app.store).group(&id) {
        Some(g) => respond(StatusCode::OK, g.to_json()),
        None => not_found(),
    }
}

/// Oldest first whatever `order` says (as the live API behaves); only `list_metadata.after`.
pub(super) async fn list_events(State(app): State<App>, q: Params) -> Response {
    // Comma-joined (`events=a,b`), repeated (`events=a&events=b`) and `events[]=a` all work.
    let mut names: Vec<String> = q
        .all("events")
        .chain(q.all("events[]"))
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    names.dedup();
    if names.is_empty() {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({ "message": EVENTS_REQUIRED, "code": "invalid_events_request" }),
        );
    }
    let limit = match parse_limit(q.get("limit")) {
        Ok(l) => l,
        Err(e) => return invalid_param(&e),
    };
    let mut range = [None, None];
    for (slot, field) in range.iter_mut().zip(["range_start", "range_end"]) {
        if let Some(raw) = q.get(field) {
            match parse_iso(raw) {
                Some(t) => *slot = Some(t),
                None => return validation_failed(&[(field, "must be an ISO-8601 timestamp")]),
            }
        }
    }
    if range[0].is_some() && q.get("after").is_some() {
        // WorkOS: `range_start` cannot be combined with `after`.
        return validation_failed(&[("range_start", "cannot be combined with after")]);
    }
    let query = EventQuery {
        events: names,
        after: q.get("after").map(str::to_owned),
        limit,
        range_start: range[0],
        range_end: range[1],
        organization_id: q.get("organization_id").map(str::to_owned),
    };
    let page = query.run(lock(&app.store).events());
    let data: Vec<Value> = page.data.iter().map(|e| e.to_json()).collect();
    respond(
        StatusCode::OK,
        json!({ "object": "list", "data": data, "list_metadata": { "after": page.after } }),
    )
}
