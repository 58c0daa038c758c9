//! The WorkOS event envelope, as far as the pipeline needs to read it.
//!
//! The payload is an invalidation, never the state: only ids, the type and the creation time are
//! read here. Names, group lists and states in `data` are deliberately ignored.

use serde::Deserialize;

use crate::clock::EpochMillis;

/// What the receiver needs to route a verified body: its id, type and directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHead {
    pub id: String,
    pub event: String,
    /// The directory the event is about, used only as a routing key (the SQS message group):
    /// `data.directory_id`, or `data.id` when `data.object` is `"directory"`. `None` when absent
    /// or not usable as a message group id (see [`is_routing_key`]).
    pub directory_id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("event `id` missing or not a non-empty string")]
    MissingId,
    #[error("event `event` missing or not a non-empty string")]
    MissingType,
    #[error("event `{0}` too long")]
    TooLong(&'static str),
}

/// Longest id or type accepted (WorkOS ids are ~30 characters; SQS attributes allow far more).
pub const MAX_FIELD_LEN: usize = 256;

/// Longest SQS message group id.
pub const MAX_ROUTING_KEY_LEN: usize = 128;

#[derive(Deserialize)]
struct RawHead {
    id: Option<serde_json::Value>,
    event: Option<serde_json::Value>,
    data: Option<serde_json::Value>,
}

/// True when `s` can be an SQS message group id: 1 to 128 characters, each an ASCII letter,
/// digit or punctuation mark.
pub fn is_routing_key(s: &str) -> bool {
    (1..=MAX_ROUTING_KEY_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The directory an event is about, as a routing key only (never trusted as state).
fn directory_of(data: Option<&serde_json::Value>) -> Option<String> {
    let data = data?.as_object()?;
    let str_field = |k: &str| {
        data.get(k)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let id = match str_field("directory_id") {
        Some(d) => d,
        None if str_field("object") == Some("directory") => str_field("id")?,
        None => return None,
    };
    is_routing_key(id).then(|| id.to_owned())
}

/// Parse just `id`, `event` and the directory id from a body. Unknown fields are ignored.
pub fn parse_head(body: &[u8]) -> Result<EnvelopeHead, EnvelopeError> {
    let raw: RawHead = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v @ serde_json::Value::Object(_)) => serde_json::from_value(v).map_err(|_| EnvelopeError::NotAnObject)?,
        _ => return Err(EnvelopeError::NotAnObject),
    };
    let id = non_empty_str(raw.id).ok_or(EnvelopeError::MissingId)?;
    let event = non_empty_str(raw.event).ok_or(EnvelopeError::MissingType)?;
    if id.len() > MAX_FIELD_LEN {
        return Err(EnvelopeError::TooLong("id"));
    }
    if event.len() > MAX_FIELD_LEN {
        return Err(EnvelopeError::TooLong("event"));
    }
    let directory_id = directory_of(raw.data.as_ref());
    Ok(EnvelopeHead {
        id,
        event,
        directory_id,
    })
}

fn non_empty_str(v: Option<serde_json::Value>) -> Option<String> {
    match v {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s),
        _ => None,
    }
}

/// Parse WorkOS's `created_at`, whose format varies between samples:
/// `2021-06-25T19:07:33.155Z`, `2023-04-28 20:05:31.093`, `2021-07-31T05:10:19+0000`.
pub fn parse_created_at(s: &str) -> Option<EpochMillis> {
    use chrono::{DateTime, NaiveDateTime};
    let s = s.trim();
    let to_ms = |ms: i64| u64::try_from(ms).ok().map(EpochMillis);
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return to_ms(dt.timestamp_millis());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return to_ms(dt.timestamp_millis());
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return to_ms(dt.and_utc().timestamp_millis());
        }
    }
    None
}

/// Format an instant as WorkOS writes `created_at`: `2026-01-15T12:00:00.000Z`.
pub fn format_created_at(t: EpochMillis) -> String {
    let ms = i64::try_from(t.0).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_of_a_dsync_event() {
        let body = br#"{"object":"event","id":"event_01","event":"dsync.group.updated","data":{"id":"directory_group_1","name":"Old"},"created_at":"2026-01-15T12:00:00.000Z"}"#;
        assert_eq!(
            parse_head(body),
            Ok(EnvelopeHead {
                id: "event_01".into(),
                event: "dsync.group.updated".into(),
                directory_id: None,
            })
        );
    }

    #[test]
    fn directory_id_is_read_as_a_routing_key() {
        let dir = |body: &str| parse_head(body.as_bytes()).expect("head").directory_id;
        assert_eq!(
            dir(
                r#"{"id":"e","event":"dsync.user.created","data":{"object":"directory_user","id":"directory_user_1","directory_id":"directory_01"}}"#
            ),
            Some("directory_01".into())
        );
        assert_eq!(
            dir(
                r#"{"id":"e","event":"dsync.activated","data":{"object":"directory","id":"directory_02","name":"Acme"}}"#
            ),
            Some("directory_02".into())
        );
        // `data.directory_id` wins over a directory object's own id.
        assert_eq!(
            dir(
                r#"{"id":"e","event":"x","data":{"object":"directory","id":"directory_a","directory_id":"directory_b"}}"#
            ),
            Some("directory_b".into())
        );
        // Another object's id is not a directory id.
        assert_eq!(
            dir(
                r#"{"id":"e","event":"dsync.group.created","data":{"object":"directory_group","id":"directory_group_1"}}"#
            ),
            None
        );
        for data in [
            r#""directory_01""#,
            r#"{}"#,
            r#"{"directory_id":7}"#,
            r#"{"directory_id":""}"#,
            r#"{"directory_id":"has space"}"#,
            r#"{"directory_id":"caf\u00e9"}"#,
            r#"{"directory_id":"a\u0001b"}"#,
        ] {
            assert_eq!(
                dir(&format!(r#"{{"id":"e","event":"x","data":{data}}}"#)),
                None,
                "{data}"
            );
        }
        let long = "d".repeat(MAX_ROUTING_KEY_LEN + 1);
        assert_eq!(
            dir(&format!(
                r#"{{"id":"e","event":"x","data":{{"directory_id":"{long}"}}}}"#
            )),
            None
        );
        let longest = "d".repeat(MAX_ROUTING_KEY_LEN);
        assert_eq!(
            dir(&format!(
                r#"{{"id":"e","event":"x","data":{{"directory_id":"{longest}"}}}}"#
            )),
            Some(longest)
        );
        assert_eq!(dir(r#"{"id":"e","event":"x"}"#), None);
    }

    #[test]
    fn bad_bodies() {
        assert_eq!(parse_head(b""), Err(EnvelopeError::NotAnObject));
        assert_eq!(parse_head(b"[1,2]"), Err(EnvelopeError::NotAnObject));
        assert_eq!(parse_head(b"\"x\""), Err(EnvelopeError::NotAnObject));
        assert_eq!(parse_head(b"{not json"), Err(EnvelopeError::NotAnObject));
        assert_eq!(parse_head(br#"{"event":"x"}"#), Err(EnvelopeError::MissingId));
        assert_eq!(parse_head(br#"{"id":7,"event":"x"}"#), Err(EnvelopeError::MissingId));
        assert_eq!(parse_head(br#"{"id":" ","event":"x"}"#), Err(EnvelopeError::MissingId));
        assert_eq!(parse_head(br#"{"id":"e"}"#), Err(EnvelopeError::MissingType));
        let long = format!(r#"{{"id":"{}","event":"x"}}"#, "a".repeat(300));
        assert_eq!(parse_head(long.as_bytes()), Err(EnvelopeError::TooLong("id")));
    }

    #[test]
    fn created_at_formats() {
        let want = Some(EpochMillis(1_624_648_053_155));
        assert_eq!(parse_created_at("2021-06-25T19:07:33.155Z"), want);
        assert_eq!(parse_created_at("2021-06-25 19:07:33.155"), want);
        assert_eq!(parse_created_at("2021-06-25T19:07:33.155+0000"), want);
        assert_eq!(
            parse_created_at("2021-07-31T05:10:19+0000"),
            Some(EpochMillis(1_627_708_219_000))
        );
        assert_eq!(parse_created_at("yesterday"), None);
        let t = EpochMillis(1_624_648_053_155);
        assert_eq!(format_created_at(t), "2021-06-25T19:07:33.155Z");
        assert_eq!(parse_created_at(&format_created_at(t)), Some(t));
    }
}
