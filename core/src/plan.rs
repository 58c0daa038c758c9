//! From a WorkOS event to what must be re-read. Only ids are taken from the payload.

use serde::Deserialize;

use crate::clock::EpochMillis;
use crate::event::parse_created_at;

/// The message body of a continuation: `{"object":"dsync_continuation","directory_id":"…"}`.
pub const CONTINUATION: &str = "dsync_continuation";
/// The message body of a reconcile request: `{"object":"dsync_request","directory_id":"…","requested_at":…}`.
pub const REQUEST: &str = "dsync_request";

/// A parsed event: its id, type, creation time and the ids it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub event: String,
    pub created_at: Option<EpochMillis>,
    pub action: Action,
}

/// What an event asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Re-read the user and the user's groups.
    RefreshUser { directory_id: String, user_id: String },
    /// Re-read the group and its members (a 404 means it was deleted).
    RefreshGroup { directory_id: String, group_id: String },
    /// Re-read the whole directory.
    Reconcile { directory_id: String },
    /// The directory is gone: remove everything stored for it.
    Purge { directory_id: String },
    /// Nothing to do for entitlements; recorded and acknowledged.
    Ignore,
}

impl Action {
    pub fn directory_id(&self) -> Option<&str> {
        match self {
            Action::RefreshUser { directory_id, .. }
            | Action::RefreshGroup { directory_id, .. }
            | Action::Reconcile { directory_id }
            | Action::Purge { directory_id } => Some(directory_id),
            Action::Ignore => None,
        }
    }
}

/// Why a message can never be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("not a JSON object")]
    NotJson,
    #[error("no event id")]
    NoId,
    #[error("no event type")]
    NoType,
    #[error("`{0}` names no {1}")]
    MissingId(String, &'static str),
}

#[derive(Deserialize)]
struct Envelope {
    id: Option<String>,
    event: Option<String>,
    created_at: Option<String>,
    #[serde(default)]
    data: Data,
}

#[derive(Deserialize, Default)]
struct Data {
    id: Option<String>,
    object: Option<String>,
    directory_id: Option<String>,
    user: Option<Ref>,
}

#[derive(Deserialize)]
struct Ref {
    id: Option<String>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.trim().is_empty())
}

/// A queued message: a WorkOS event, or our own bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Event(Event),
    /// Continue a directory's work (sent by the lease holder that stopped).
    Continue {
        directory_id: String,
    },
    /// Reconcile a directory (an operator, the scheduler), or purge it (`purge`: WorkOS no
    /// longer lists it).
    Request {
        directory_id: String,
        requested_at: Option<EpochMillis>,
        purge: bool,
    },
}

#[derive(Deserialize)]
struct Own {
    object: String,
    directory_id: Option<String>,
    requested_at: Option<u64>,
    #[serde(default)]
    purge: bool,
}

/// Parse any queued body.
pub fn parse_message(body: &str) -> Result<Message, PlanError> {
    if let Ok(own) = serde_json::from_str::<Own>(body) {
        let dir =
            || nonempty(own.directory_id.clone()).ok_or_else(|| PlanError::MissingId(own.object.clone(), "directory"));
        match own.object.as_str() {
            CONTINUATION => return Ok(Message::Continue { directory_id: dir()? }),
            REQUEST => {
                return Ok(Message::Request {
                    directory_id: dir()?,
                    requested_at: own.requested_at.map(EpochMillis),
                    purge: own.purge,
                })
            }
            _ => {}
        }
    }
    parse_event(body).map(Message::Event)
}

/// The body of a reconcile request.
pub fn request_body(directory_id: &str, requested_at: EpochMillis) -> String {
    serde_json::json!({
        "object": REQUEST,
        "directory_id": directory_id,
        "requested_at": requested_at.0,
    })
    .to_string()
}

/// The body of a purge request: WorkOS no longer lists the directory (the scheduler found it).
pub fn purge_body(directory_id: &str, requested_at: EpochMillis) -> String {
    serde_json::json!({
        "object": REQUEST,
        "directory_id": directory_id,
        "requested_at": requested_at.0,
        "purge": true,
    })
    .to_string()
}

/// Parse a queued body into an event and its action.
pub fn parse_event(body: &str) -> Result<Event, PlanError> {
    let env: Envelope = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v @ serde_json::Value::Object(_)) => serde_json::from_value(v).map_err(|_| PlanError::NotJson)?,
        _ => return Err(PlanError::NotJson),
    };
    let id = nonempty(env.id).ok_or(PlanError::NoId)?;
    let event = nonempty(env.event).ok_or(PlanError::NoType)?;
    let created_at = env.created_at.as_deref().and_then(parse_created_at);
    let data = env.data;
    let dir =
        |d: &Data| nonempty(d.directory_id.clone()).ok_or_else(|| PlanError::MissingId(event.clone(), "directory"));
    let action = match event.as_str() {
        "dsync.user.created" | "dsync.user.updated" | "dsync.user.deleted" => Action::RefreshUser {
            directory_id: dir(&data)?,
            user_id: nonempty(data.id.clone()).ok_or_else(|| PlanError::MissingId(event.clone(), "user"))?,
        },
        "dsync.group.user_added" | "dsync.group.user_removed" => Action::RefreshUser {
            directory_id: dir(&data)?,
            user_id: nonempty(data.user.as_ref().and_then(|u| u.id.clone()))
                .ok_or_else(|| PlanError::MissingId(event.clone(), "user"))?,
        },
        "dsync.group.created" | "dsync.group.updated" | "dsync.group.deleted" => Action::RefreshGroup {
            directory_id: dir(&data)?,
            group_id: nonempty(data.id.clone()).ok_or_else(|| PlanError::MissingId(event.clone(), "group"))?,
        },
        "dsync.deleted" => Action::Purge {
            directory_id: nonempty(data.id.clone()).ok_or_else(|| PlanError::MissingId(event.clone(), "directory"))?,
        },
        e if e.starts_with("dsync.token.") => Action::Ignore,
        // dsync.activated and any dsync.* we do not know: re-read the whole directory.
        e if e.starts_with("dsync.") => {
            let directory_id = if data.object.as_deref() == Some("directory") {
                nonempty(data.id.clone())
            } else {
                nonempty(data.directory_id.clone())
            };
            Action::Reconcile {
                directory_id: directory_id.ok_or_else(|| PlanError::MissingId(event.clone(), "directory"))?,
            }
        }
        _ => Action::Ignore,
    };
    Ok(Event {
        id,
        event,
        created_at,
        action,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> Result<Event, PlanError> {
        parse_event(&format!(
            r#"{{"object":"event","id":"event_1","event":"{event}","data":{data},"created_at":"2026-01-15T12:00:00.000Z"}}"#
        ))
    }

    #[test]
    fn user_and_membership_events_refresh_the_user() {
        let want = Action::RefreshUser {
            directory_id: "d".into(),
            user_id: "u".into(),
        };
        for e in ["dsync.user.created", "dsync.user.updated", "dsync.user.deleted"] {
            assert_eq!(
                ev(e, r#"{"id":"u","directory_id":"d","email":"x@y"}"#).map(|e| e.action),
                Ok(want.clone())
            );
        }
        for e in ["dsync.group.user_added", "dsync.group.user_removed"] {
            let data = r#"{"directory_id":"d","user":{"id":"u"},"group":{"id":"g","name":"Old"}}"#;
            assert_eq!(ev(e, data).map(|e| e.action), Ok(want.clone()));
        }
    }

    #[test]
    fn group_events_refresh_the_group_and_ignore_the_payload_name() {
        let e = ev(
            "dsync.group.updated",
            r#"{"id":"g","directory_id":"d","name":"Enterprise Admins","previous_attributes":{"name":"x"}}"#,
        )
        .expect("event");
        assert_eq!(
            e.action,
            Action::RefreshGroup {
                directory_id: "d".into(),
                group_id: "g".into()
            }
        );
        assert_eq!(e.created_at, Some(EpochMillis(1_768_478_400_000)));
    }

    #[test]
    fn directory_events() {
        assert_eq!(
            ev("dsync.deleted", r#"{"object":"directory","id":"d","state":"deleting"}"#).map(|e| e.action),
            Ok(Action::Purge {
                directory_id: "d".into()
            })
        );
        assert_eq!(
            ev("dsync.activated", r#"{"object":"directory","id":"d"}"#).map(|e| e.action),
            Ok(Action::Reconcile {
                directory_id: "d".into()
            })
        );
        assert_eq!(
            ev("dsync.something_new", r#"{"directory_id":"d"}"#).map(|e| e.action),
            Ok(Action::Reconcile {
                directory_id: "d".into()
            })
        );
        assert_eq!(
            ev("dsync.token.created", r#"{"id":"t"}"#).map(|e| e.action),
            Ok(Action::Ignore)
        );
        assert_eq!(
            ev("user.created", r#"{"id":"u"}"#).map(|e| e.action),
            Ok(Action::Ignore)
        );
    }

    #[test]
    fn our_own_messages() {
        assert_eq!(
            parse_message(r#"{"object":"dsync_continuation","directory_id":"d"}"#),
            Ok(Message::Continue {
                directory_id: "d".into()
            })
        );
        assert_eq!(
            parse_message(&request_body("d", EpochMillis(7))),
            Ok(Message::Request {
                directory_id: "d".into(),
                requested_at: Some(EpochMillis(7)),
                purge: false,
            })
        );
        assert_eq!(
            parse_message(&purge_body("d", EpochMillis(7))),
            Ok(Message::Request {
                directory_id: "d".into(),
                requested_at: Some(EpochMillis(7)),
                purge: true,
            })
        );
        assert!(matches!(
            parse_message(r#"{"object":"dsync_continuation"}"#),
            Err(PlanError::MissingId(_, "directory"))
        ));
        assert!(matches!(
            parse_message(
                r#"{"object":"event","id":"e","event":"dsync.deleted","data":{"object":"directory","id":"d"}}"#
            ),
            Ok(Message::Event(_))
        ));
    }

    #[test]
    fn unusable_messages() {
        assert_eq!(parse_event("nope"), Err(PlanError::NotJson));
        assert_eq!(parse_event("[]"), Err(PlanError::NotJson));
        assert_eq!(parse_event(r#"{"event":"dsync.user.created"}"#), Err(PlanError::NoId));
        assert_eq!(parse_event(r#"{"id":"e"}"#), Err(PlanError::NoType));
        assert!(matches!(
            ev("dsync.user.updated", r#"{"id":"u"}"#),
            Err(PlanError::MissingId(_, "directory"))
        ));
        assert!(matches!(
            ev("dsync.group.user_added", r#"{"directory_id":"d"}"#),
            Err(PlanError::MissingId(_, "user"))
        ));
        assert!(matches!(
            ev("dsync.deleted", r#"{}"#),
            Err(PlanError::MissingId(_, "directory"))
        ));
        assert!(matches!(ev("dsync.group.updated", r#""str""#), Err(PlanError::NotJson)));
    }
}
