//! The WorkOS event envelope, as far as the pipeline needs to read it.
//!
//! The payload is an invalidation, never the state: only ids, the type and the creation time are
//! read here. Names, group lists and states in `data` are deliberately ignored.

use serde::Deserialize;

use crate::clock::EpochMillis;

/// What the receiver needs to route a verified body: its id and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHead {
    pub id: String,
    pub event: String,
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

#[derive(Deserialize)]
struct RawHead {
    id: Option<serde_json::Value>,
    event: Option<serde_json::Value>,
}

/// Parse just `id` and `event` from a body. Unknown fields are ignored.
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
    Ok(EnvelopeHead { id, event })
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
                event: "dsync.group.updated".into()
            })
        );
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
