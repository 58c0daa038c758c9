//! The queue port (where verified webhooks go) and its SQS adapter.

use std::future::Future;
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine as _;

use crate::clock::EpochMillis;

/// How a message body carries the webhook body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyEncoding {
    /// The raw request body, byte for byte (no `body_encoding` attribute).
    #[default]
    Raw,
    /// The raw body in standard base64 (`body_encoding=base64`), for bodies with characters SQS
    /// refuses in a message body.
    Base64,
}

impl BodyEncoding {
    /// The `body_encoding` attribute value, `None` for a raw body.
    pub fn attribute(self) -> Option<&'static str> {
        match self {
            BodyEncoding::Raw => None,
            BodyEncoding::Base64 => Some(BODY_ENCODING_BASE64),
        }
    }
}

/// A verified webhook, ready to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The message body: the raw request body byte for byte, or its base64 (see `encoding`).
    pub body: String,
    pub encoding: BodyEncoding,
    pub event_id: String,
    pub event_type: String,
    pub signed_at: EpochMillis,
    /// The directory the event is about (a routing key only), when the payload names one.
    pub directory_id: Option<String>,
}

impl QueuedEvent {
    /// A verified raw body as the queue will carry it: as is when SQS accepts every character,
    /// otherwise base64.
    pub fn encode_body(raw: &str) -> (String, BodyEncoding) {
        if sqs_body_allowed(raw) {
            (raw.to_owned(), BodyEncoding::Raw)
        } else {
            (
                base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
                BodyEncoding::Base64,
            )
        }
    }

    /// The SQS message group: the directory id, or [`NO_DIRECTORY_GROUP`].
    pub fn message_group_id(&self) -> &str {
        self.directory_id.as_deref().unwrap_or(NO_DIRECTORY_GROUP)
    }
}

/// Message attribute names (read by the processor and by operators in the console).
pub const ATTR_EVENT_ID: &str = "workos_event_id";
pub const ATTR_EVENT_TYPE: &str = "workos_event_type";
pub const ATTR_SIGNED_AT: &str = "workos_signed_at_ms";
pub const ATTR_SOURCE: &str = "source";
/// Set to [`BODY_ENCODING_BASE64`] when the body is base64; absent for a raw body.
pub const ATTR_BODY_ENCODING: &str = "body_encoding";
/// The directory id the message is grouped by (absent when the event names none).
pub const ATTR_DIRECTORY_ID: &str = "workos_directory_id";
pub const BODY_ENCODING_BASE64: &str = "base64";
/// The message group of events that name no directory.
pub const NO_DIRECTORY_GROUP: &str = "no-directory";

/// SQS accepts only `#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF`.
pub fn sqs_body_allowed(s: &str) -> bool {
    s.chars().all(
        |c| matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyDecodeError {
    #[error("unknown body_encoding `{0}`")]
    UnknownEncoding(String),
    #[error("body is marked base64 but does not decode: {0}")]
    NotBase64(String),
    #[error("decoded body is not UTF-8: {0}")]
    NotUtf8(String),
}

/// The original webhook body of a queued message, from its body and its `body_encoding`
/// attribute (`None` when the attribute is absent: the body is the original).
pub fn decode_body(body: &str, encoding: Option<&str>) -> Result<String, BodyDecodeError> {
    match encoding {
        None => Ok(body.to_owned()),
        Some(BODY_ENCODING_BASE64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|e| BodyDecodeError::NotBase64(e.to_string()))?;
            String::from_utf8(bytes).map_err(|e| BodyDecodeError::NotUtf8(e.to_string()))
        }
        Some(other) => Err(BodyDecodeError::UnknownEncoding(other.to_owned())),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("queue send failed: {0}")]
pub struct QueueError(pub String);

/// The port the receiver depends on.
pub trait EventQueue: Send + Sync + 'static {
    /// Enqueue and return the queue's message id once the queue has accepted it.
    fn enqueue(&self, event: &QueuedEvent) -> impl Future<Output = Result<String, QueueError>> + Send;
}

/// SQS adapter. Timeouts and retries come from the `SdkConfig` the client was built with.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
        }
    }
}

fn string_attr(value: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| QueueError(e.to_string()))
}

impl EventQueue for SqsQueue {
    async fn enqueue(&self, event: &QueuedEvent) -> Result<String, QueueError> {
        let signed_at = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(event.signed_at.0.to_string())
            .build()
            .map_err(|e| QueueError(e.to_string()))?;
        let mut send = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(&event.body)
            // Standard queues take a group id too ("fair queues"): one busy directory does not
            // hold up the others' events.
            .message_group_id(event.message_group_id())
            .message_attributes(ATTR_EVENT_ID, string_attr(&event.event_id)?)
            .message_attributes(ATTR_EVENT_TYPE, string_attr(&event.event_type)?)
            .message_attributes(ATTR_SIGNED_AT, signed_at)
            .message_attributes(ATTR_SOURCE, string_attr("webhook")?);
        if let Some(dir) = &event.directory_id {
            send = send.message_attributes(ATTR_DIRECTORY_ID, string_attr(dir)?);
        }
        if let Some(enc) = event.encoding.attribute() {
            send = send.message_attributes(ATTR_BODY_ENCODING, string_attr(enc)?);
        }
        let out = send
            .send()
            .await
            .map_err(|e| QueueError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
        Ok(out.message_id.unwrap_or_default())
    }
}

/// An in-memory queue for unit tests and benchmarks; can be told to fail.
#[derive(Debug, Clone, Default)]
pub struct MemoryQueue {
    inner: Arc<Mutex<MemoryQueueState>>,
}

#[derive(Debug, Default)]
struct MemoryQueueState {
    sent: Vec<QueuedEvent>,
    failing: bool,
}

impl MemoryQueue {
    pub fn sent(&self) -> Vec<QueuedEvent> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).sent.clone()
    }
    pub fn set_failing(&self, failing: bool) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).failing = failing;
    }
    pub fn clear(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).sent.clear();
    }
}

impl EventQueue for MemoryQueue {
    async fn enqueue(&self, event: &QueuedEvent) -> Result<String, QueueError> {
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.failing {
            return Err(QueueError("memory queue told to fail".into()));
        }
        s.sent.push(event.clone());
        Ok(format!("mem-{}", s.sent.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqs_character_set() {
        assert!(sqs_body_allowed("{\"a\":\"\t\r\n 😀 é\"}"));
        assert!(!sqs_body_allowed("\u{1}"));
        assert!(!sqs_body_allowed("\u{FFFE}"));
        assert!(!sqs_body_allowed("\u{FFFF}"));
    }

    #[test]
    fn raw_bodies_stay_raw() {
        let raw = r#"{"id":"e","event":"x","n":"😀 é\t"}"#;
        assert_eq!(QueuedEvent::encode_body(raw), (raw.to_owned(), BodyEncoding::Raw));
        assert_eq!(decode_body(raw, BodyEncoding::Raw.attribute()), Ok(raw.to_owned()));
    }

    #[test]
    fn bodies_sqs_refuses_round_trip_through_base64() {
        let raw = "{\"id\":\"e\",\"event\":\"x\",\"a\":\"\u{1}\",\"b\":\"\u{FFFE}\",\"c\":\"😀\"}";
        let (body, enc) = QueuedEvent::encode_body(raw);
        assert_eq!(enc, BodyEncoding::Base64);
        assert_eq!(enc.attribute(), Some("base64"));
        assert!(sqs_body_allowed(&body), "{body}");
        let back = decode_body(&body, enc.attribute()).expect("decodes");
        assert_eq!(back.as_bytes(), raw.as_bytes());
    }

    #[test]
    fn decode_errors_are_typed() {
        assert!(matches!(
            decode_body("%%%", Some("base64")),
            Err(BodyDecodeError::NotBase64(_))
        ));
        let not_utf8 = base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe]);
        assert!(matches!(
            decode_body(&not_utf8, Some("base64")),
            Err(BodyDecodeError::NotUtf8(_))
        ));
        assert_eq!(
            decode_body("x", Some("gzip")),
            Err(BodyDecodeError::UnknownEncoding("gzip".into()))
        );
    }

    #[test]
    fn message_group_is_the_directory_or_a_fixed_one() {
        let mut e = QueuedEvent {
            body: "{}".into(),
            encoding: BodyEncoding::Raw,
            event_id: "e".into(),
            event_type: "x".into(),
            signed_at: EpochMillis(1),
            directory_id: Some("directory_01".into()),
        };
        assert_eq!(e.message_group_id(), "directory_01");
        e.directory_id = None;
        assert_eq!(e.message_group_id(), NO_DIRECTORY_GROUP);
    }
}
