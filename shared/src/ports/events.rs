//! The Events API port: WorkOS's replayable stream of events (`GET /events`), read by the events
//! poller (`crate::events_poller`) to bring what webhooks missed onto the events queue.
//!
//! Adapters: `adapters::workos` (HTTP) and the sandbox's in-process `DirectApi`.

use std::future::Future;

use crate::clock::EpochMillis;
use crate::directory::{ApiError, CallBudget, Page};
use crate::event::{parse_created_at, parse_head, EnvelopeError};

/// Where a page of events starts. WorkOS refuses `range_start` together with `after`, so a
/// cursor is one or the other, never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsCursor {
    /// The events after this event id, oldest first.
    After(String),
    /// The events created at or after this instant, oldest first.
    RangeStart(EpochMillis),
}

/// One event as the Events API served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub id: String,
    pub event_type: String,
    pub created_at: Option<EpochMillis>,
    /// The directory the event is about (a routing key only, as the receiver reads it).
    pub directory_id: Option<String>,
    /// The event's exact JSON as served: the body a webhook would have carried.
    pub raw: String,
}

impl RawEvent {
    /// Read the id, type, creation time and directory of one event's JSON, keeping the JSON
    /// itself untouched. Nothing else in it is read.
    pub fn parse(raw: String) -> Result<RawEvent, EnvelopeError> {
        let head = parse_head(raw.as_bytes())?;
        #[derive(serde::Deserialize)]
        struct Created {
            created_at: Option<String>,
        }
        let created_at = serde_json::from_str::<Created>(&raw)
            .ok()
            .and_then(|c| c.created_at)
            .as_deref()
            .and_then(parse_created_at);
        Ok(RawEvent {
            id: head.id,
            event_type: head.event,
            created_at,
            directory_id: head.directory_id,
            raw,
        })
    }
}

/// Reads of the Events API.
pub trait EventsApi: Send + Sync + 'static {
    /// One page of `GET /events?events=<types, comma-joined>&limit=<limit>` from `cursor`, oldest
    /// first. `Page::after` is `None` on the last page.
    fn events_page(
        &self,
        types: &[&str],
        cursor: EventsCursor,
        limit: u32,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Page<RawEvent>, ApiError>> + Send;
}

impl<T: EventsApi> EventsApi for std::sync::Arc<T> {
    fn events_page(
        &self,
        types: &[&str],
        cursor: EventsCursor,
        limit: u32,
        budget: &CallBudget,
    ) -> impl Future<Output = Result<Page<RawEvent>, ApiError>> + Send {
        (**self).events_page(types, cursor, limit, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_the_exact_json_and_reads_only_the_head() {
        let raw = r#"{"object":"event","id":"event_1","event":"dsync.group.user_added","data":{"directory_id":"directory_7","user":{"id":"u","email":"a@b.c"}},"created_at":"2026-01-15T12:00:00.000Z"}"#;
        let e = RawEvent::parse(raw.to_string()).expect("event");
        assert_eq!(e.raw, raw);
        assert_eq!(e.id, "event_1");
        assert_eq!(e.event_type, "dsync.group.user_added");
        assert_eq!(e.directory_id.as_deref(), Some("directory_7"));
        assert_eq!(e.created_at, Some(EpochMillis(1_768_478_400_000)));
        let dir = RawEvent::parse(
            r#"{"id":"e","event":"dsync.deleted","data":{"object":"directory","id":"directory_9"}}"#.into(),
        )
        .expect("event");
        assert_eq!(
            (dir.directory_id.as_deref(), dir.created_at),
            (Some("directory_9"), None)
        );
        assert!(RawEvent::parse(r#"{"event":"dsync.user.created"}"#.into()).is_err());
    }
}
