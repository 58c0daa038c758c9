//! The webhook receiver: verify, enqueue, answer. Nothing else happens here.
//!
//! The core (`Receiver::handle`) is transport-free; `lambda` adapts it to API Gateway through
//! `lambda_http`, and `local` serves it over plain HTTP for local runs and tests.

pub mod config;
pub mod lambda;
pub mod local;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;

use crate::clock::Clock;
use crate::event::{parse_head, EnvelopeError};
use crate::queue::{EventQueue, QueuedEvent};
use crate::signature::{Verifier, VerifyError};

pub use config::ReceiverConfig;

/// SQS accepts 1 MiB per message, attributes included; keep room for ours.
pub const MAX_BODY_BYTES: usize = 1024 * 1024 - 4 * 1024;

/// What happened to one request. Each maps to a status and a deliberately vague public message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Queued {
        event_id: String,
        event_type: String,
        message_id: String,
    },
    MethodNotAllowed,
    NotFound,
    Forbidden,
    TooLarge,
    Unauthorized(VerifyError),
    BadRequest(&'static str),
    Unavailable,
}

impl Outcome {
    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Queued { .. } => StatusCode::OK,
            Outcome::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::Forbidden => StatusCode::FORBIDDEN,
            Outcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Outcome::BadRequest(_) => StatusCode::BAD_REQUEST,
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What the caller is told. Verification failures all read the same.
    pub fn public_message(&self) -> &'static str {
        match self {
            Outcome::Queued { .. } => "accepted",
            Outcome::MethodNotAllowed => "method not allowed",
            Outcome::NotFound => "not found",
            Outcome::Forbidden => "forbidden",
            Outcome::TooLarge => "payload too large",
            Outcome::Unauthorized(_) => "unauthorized",
            Outcome::BadRequest(why) => why,
            Outcome::Unavailable => "temporarily unavailable, retry later",
        }
    }

    /// The JSON body sent back.
    pub fn body(&self) -> String {
        #[derive(Serialize)]
        struct Reply<'a> {
            message: &'a str,
        }
        serde_json::to_string(&Reply {
            message: self.public_message(),
        })
        .unwrap_or_default()
    }

    /// A response with the JSON body and headers, for any transport built on `http`.
    pub fn into_response<B: From<String>>(self) -> http::Response<B> {
        let mut resp = http::Response::new(B::from(self.body()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        if matches!(self, Outcome::MethodNotAllowed) {
            h.insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        }
        resp
    }
}

/// One incoming request, independent of transport.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub method: &'a Method,
    /// The path as routed (only its last segment matters, for the optional path token).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub source_ip: Option<IpAddr>,
}

/// The receiver core, generic over its queue and clock ports.
#[derive(Debug)]
pub struct Receiver<Q, C> {
    verifier: Verifier,
    queue: Q,
    clock: C,
    allowed_ips: Option<Vec<IpAddr>>,
    path_token: Option<String>,
}

impl<Q: EventQueue, C: Clock> Receiver<Q, C> {
    pub fn new(verifier: Verifier, queue: Q, clock: C) -> Self {
        Receiver {
            verifier,
            queue,
            clock,
            allowed_ips: None,
            path_token: None,
        }
    }

    pub fn from_config(config: ReceiverConfig, queue: Q, clock: C) -> Self {
        Receiver {
            verifier: config.verifier,
            queue,
            clock,
            allowed_ips: config.allowed_ips,
            path_token: config.path_token,
        }
    }

    pub fn with_allowed_ips(mut self, ips: Option<Vec<IpAddr>>) -> Self {
        self.allowed_ips = ips;
        self
    }

    pub fn with_path_token(mut self, token: Option<String>) -> Self {
        self.path_token = token;
        self
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// Decide, without logging.
    pub async fn decide(&self, req: Inbound<'_>) -> Outcome {
        if req.method != Method::POST {
            return Outcome::MethodNotAllowed;
        }
        if let Some(token) = &self.path_token {
            let last = req.path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            if !constant_time_eq(last.as_bytes(), token.as_bytes()) {
                return Outcome::NotFound;
            }
        }
        if let Some(allowed) = &self.allowed_ips {
            match req.source_ip {
                Some(ip) if allowed.contains(&ip) => {}
                _ => return Outcome::Forbidden,
            }
        }
        if req.body.len() > MAX_BODY_BYTES {
            return Outcome::TooLarge;
        }
        let signed_at = match self.verifier.verify_headers(req.headers, req.body, self.clock.now()) {
            Ok(t) => t,
            Err(e) => return Outcome::Unauthorized(e),
        };
        let head = match parse_head(req.body) {
            Ok(h) => h,
            Err(EnvelopeError::NotAnObject) => return Outcome::BadRequest("body is not a JSON object"),
            Err(EnvelopeError::MissingId) => return Outcome::BadRequest("event id missing"),
            Err(EnvelopeError::MissingType) => return Outcome::BadRequest("event type missing"),
            Err(EnvelopeError::TooLong(_)) => return Outcome::BadRequest("event field too long"),
        };
        // serde_json accepted it, so it is UTF-8; SQS also refuses some code points.
        let body = match std::str::from_utf8(req.body) {
            Ok(s) if sqs_body_allowed(s) => s.to_owned(),
            _ => return Outcome::BadRequest("body has characters a queue cannot carry"),
        };
        let queued = QueuedEvent {
            body,
            event_id: head.id,
            event_type: head.event,
            signed_at,
        };
        match self.queue.enqueue(&queued).await {
            Ok(message_id) => Outcome::Queued {
                event_id: queued.event_id,
                event_type: queued.event_type,
                message_id,
            },
            Err(e) => {
                tracing::error!(outcome = "queue_error", event_id = %queued.event_id, error = %e, "enqueue failed");
                Outcome::Unavailable
            }
        }
    }

    /// Decide and log the outcome (never the body, the signature or the secret).
    pub async fn handle(&self, req: Inbound<'_>) -> Outcome {
        let outcome = self.decide(req).await;
        match &outcome {
            Outcome::Queued {
                event_id,
                event_type,
                message_id,
            } => tracing::info!(
                outcome = "queued",
                event_id = %event_id,
                event_type = %event_type,
                message_id = %message_id,
                "webhook queued"
            ),
            Outcome::Unauthorized(e) => {
                tracing::warn!(outcome = "rejected", reason = e.kind(), source_ip = %req.source_ip.map(|ip| ip.to_string()).unwrap_or_default(), "webhook rejected")
            }
            Outcome::Unavailable => {}
            other => tracing::warn!(
                outcome = "refused",
                status = other.status().as_u16(),
                reason = other.public_message(),
                source_ip = %req.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                "webhook refused"
            ),
        }
        outcome
    }
}

/// A receiver shared between concurrent requests.
pub type SharedReceiver<Q, C> = Arc<Receiver<Q, C>>;

/// SQS accepts only `#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF`.
pub fn sqs_body_allowed(s: &str) -> bool {
    s.chars().all(
        |c| matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{EpochMillis, ManualClock};
    use crate::queue::MemoryQueue;
    use crate::signature::{signature_header, DEFAULT_TOLERANCE};

    const T0: EpochMillis = EpochMillis(1_700_000_000_000);
    const SECRET: &str = "whsec_unit";
    const BODY: &[u8] = br#"{"object":"event","id":"event_1","event":"dsync.user.created","data":{"id":"directory_user_1"},"created_at":"2023-11-14T22:13:20.000Z"}"#;

    fn receiver() -> Receiver<MemoryQueue, ManualClock> {
        let verifier = Verifier::new([SECRET], DEFAULT_TOLERANCE).expect("secret");
        Receiver::new(verifier, MemoryQueue::default(), ManualClock::at(T0))
    }

    fn signed(body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "workos-signature",
            signature_header(SECRET, T0, body).parse().expect("header"),
        );
        h
    }

    async fn post(r: &Receiver<MemoryQueue, ManualClock>, headers: &HeaderMap, body: &[u8]) -> Outcome {
        r.handle(Inbound {
            method: &Method::POST,
            path: "/webhooks/workos",
            headers,
            body,
            source_ip: None,
        })
        .await
    }

    #[tokio::test]
    async fn valid_event_is_queued_byte_for_byte() {
        let r = receiver();
        let out = post(&r, &signed(BODY), BODY).await;
        assert_eq!(out.status(), StatusCode::OK);
        let sent = r.queue().sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].body.as_bytes(), BODY);
        assert_eq!(sent[0].event_id, "event_1");
        assert_eq!(sent[0].event_type, "dsync.user.created");
        assert_eq!(sent[0].signed_at, T0);
    }

    #[tokio::test]
    async fn every_verification_failure_is_401_and_nothing_is_queued() {
        let r = receiver();
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        let cases = vec![
            (HeaderMap::new(), BODY.to_vec()),
            (signed(BODY), tampered),
            (
                {
                    let mut h = HeaderMap::new();
                    h.insert("workos-signature", "t=abc, v1=00".parse().expect("h"));
                    h
                },
                BODY.to_vec(),
            ),
            (
                {
                    let mut h = HeaderMap::new();
                    let late = T0.saturating_sub(DEFAULT_TOLERANCE + std::time::Duration::from_secs(1));
                    h.insert(
                        "workos-signature",
                        signature_header(SECRET, late, BODY).parse().expect("h"),
                    );
                    h
                },
                BODY.to_vec(),
            ),
            (
                {
                    let mut h = HeaderMap::new();
                    h.insert(
                        "workos-signature",
                        signature_header("whsec_wrong", T0, BODY).parse().expect("h"),
                    );
                    h
                },
                BODY.to_vec(),
            ),
        ];
        for (headers, body) in cases {
            let out = post(&r, &headers, &body).await;
            assert_eq!(out.status(), StatusCode::UNAUTHORIZED, "{out:?}");
            assert_eq!(out.body(), r#"{"message":"unauthorized"}"#);
        }
        assert!(r.queue().sent().is_empty());
    }

    #[tokio::test]
    async fn verified_but_not_an_event_is_400() {
        let r = receiver();
        for body in [&b"[]"[..], b"{}", br#"{"id":"e"}"#, br#"{"event":"x"}"#, b"not json"] {
            let out = post(&r, &signed(body), body).await;
            assert_eq!(
                out.status(),
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let bad_char = "{\"id\":\"e\",\"event\":\"x\",\"n\":\"\u{FFFF}\"}";
        let out = post(&r, &signed(bad_char.as_bytes()), bad_char.as_bytes()).await;
        assert_eq!(out.status(), StatusCode::BAD_REQUEST);
        assert!(r.queue().sent().is_empty());
    }

    #[tokio::test]
    async fn method_size_ip_and_token_checks() {
        let r = receiver();
        let h = signed(BODY);
        let get = r
            .handle(Inbound {
                method: &Method::GET,
                path: "/",
                headers: &h,
                body: BODY,
                source_ip: None,
            })
            .await;
        assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            post(&r, &signed(&big), &big).await.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );

        let allowed: IpAddr = "3.217.146.166".parse().expect("ip");
        let r = receiver().with_allowed_ips(Some(vec![allowed]));
        let from = |ip: Option<IpAddr>| Inbound {
            method: &Method::POST,
            path: "/w",
            headers: &h,
            body: BODY,
            source_ip: ip,
        };
        assert_eq!(
            r.handle(from(Some("10.0.0.1".parse().expect("ip")))).await.status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(r.handle(from(None)).await.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.handle(from(Some(allowed))).await.status(), StatusCode::OK);

        let r = receiver().with_path_token(Some("s3cr3t-path-token-123".into()));
        let at = |path: &'static str| Inbound {
            method: &Method::POST,
            path,
            headers: &h,
            body: BODY,
            source_ip: None,
        };
        assert_eq!(r.handle(at("/webhooks/workos")).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            r.handle(at("/webhooks/workos/wrong")).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            r.handle(at("/webhooks/workos/s3cr3t-path-token-123")).await.status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn queue_failure_is_503_never_200() {
        let r = receiver();
        r.queue().set_failing(true);
        let out = post(&r, &signed(BODY), BODY).await;
        assert_eq!(out.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn sqs_character_set() {
        assert!(sqs_body_allowed("{\"a\":\"\t\r\n 😀 é\"}"));
        assert!(!sqs_body_allowed("\u{1}"));
        assert!(!sqs_body_allowed("\u{FFFE}"));
    }

    #[test]
    fn responses_are_json_with_headers() {
        let resp: http::Response<String> = Outcome::MethodNotAllowed.into_response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[http::header::ALLOW], "POST");
        assert_eq!(resp.headers()[http::header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(resp.body()).expect("json");
        assert_eq!(v["message"], "method not allowed");
    }
}
