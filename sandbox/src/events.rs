//! Recorded `dsync.*` events and the `GET /events` query (workos-api.md §2 envelope, §5 API).

use dsync::clock::EpochMillis;
use serde_json::{json, Value};

use crate::model::iso;

pub const DSYNC_ACTIVATED: &str = "dsync.activated";
pub const DSYNC_DELETED: &str = "dsync.deleted";
pub const USER_CREATED: &str = "dsync.user.created";
pub const USER_UPDATED: &str = "dsync.user.updated";
pub const USER_DELETED: &str = "dsync.user.deleted";
pub const GROUP_CREATED: &str = "dsync.group.created";
pub const GROUP_UPDATED: &str = "dsync.group.updated";
pub const GROUP_DELETED: &str = "dsync.group.deleted";
pub const GROUP_USER_ADDED: &str = "dsync.group.user_added";
pub const GROUP_USER_REMOVED: &str = "dsync.group.user_removed";

/// One event, as served by `GET /events` and POSTed to the webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `event_…`, sortable in recording order.
    pub id: String,
    /// The event name, e.g. `dsync.user.created`.
    pub event: String,
    /// The type-specific payload (§4).
    pub data: Value,
    pub created_at: EpochMillis,
    /// The organization the event belongs to (for the `organization_id` filter).
    pub organization_id: String,
}

impl Event {
    /// The wire envelope: `{object:"event", id, event, data, created_at}`.
    pub fn to_json(&self) -> Value {
        json!({
            "object": "event",
            "id": self.id,
            "event": self.event,
            "data": self.data,
            "created_at": iso(self.created_at),
        })
    }

    /// The exact bytes a webhook delivery carries (and signs).
    pub fn to_body(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_json()).unwrap_or_default()
    }
}

/// A parsed `GET /events` query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub events: Vec<String>,
    pub after: Option<String>,
    pub limit: usize,
    pub range_start: Option<EpochMillis>,
    pub range_end: Option<EpochMillis>,
    pub organization_id: Option<String>,
}

/// A page of events, oldest first, and the cursor for the next page (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub data: Vec<Event>,
    pub after: Option<String>,
}

impl EventQuery {
    fn matches(&self, e: &Event) -> bool {
        self.events.iter().any(|n| n == &e.event)
            && self.after.as_deref().is_none_or(|a| e.id.as_str() > a)
            && self.range_start.is_none_or(|t| e.created_at >= t)
            && self.range_end.is_none_or(|t| e.created_at <= t)
            && self.organization_id.as_deref().is_none_or(|o| o == e.organization_id)
    }

    /// Always oldest-first, as the live API serves it whatever `order` says.
    pub fn run(&self, all: &[Event]) -> EventPage {
        let mut it = all.iter().filter(|e| self.matches(e));
        let data: Vec<Event> = it.by_ref().take(self.limit).cloned().collect();
        let more = it.next().is_some();
        let after = if more { data.last().map(|e| e.id.clone()) } else { None };
        EventPage { data, after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64, name: &str) -> Event {
        Event {
            id: format!("event_{n:03}"),
            event: name.into(),
            data: json!({}),
            created_at: EpochMillis(n * 1000),
            organization_id: "org_1".into(),
        }
    }

    #[test]
    fn filters_and_pages_oldest_first() {
        let all: Vec<Event> = (1..=7)
            .map(|n| ev(n, if n % 2 == 0 { USER_CREATED } else { GROUP_CREATED }))
            .collect();
        let mut q = EventQuery {
            events: vec![GROUP_CREATED.into()],
            limit: 2,
            ..Default::default()
        };
        let p1 = q.run(&all);
        assert_eq!(
            p1.data.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["event_001", "event_003"]
        );
        assert_eq!(p1.after.as_deref(), Some("event_003"));
        q.after = p1.after;
        let p2 = q.run(&all);
        assert_eq!(
            p2.data.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["event_005", "event_007"]
        );
        assert_eq!(p2.after, None);
        let q = EventQuery {
            events: vec![GROUP_CREATED.into(), USER_CREATED.into()],
            limit: 10,
            range_start: Some(EpochMillis(6000)),
            ..Default::default()
        };
        assert_eq!(q.run(&all).data.len(), 2);
    }
}
