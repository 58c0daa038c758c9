//! The webhook receiver: verify, enqueue, answer. Nothing else happens here.
//!
//! The core (`Receiver::handle`) is transport-free; `lambda` adapts it to API Gateway through
//! `lambda_http`, and `local` serves it over plain HTTP for local runs and tests.

pub mod config;
pub mod lambda;
pub mod local;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;

use crate::clock::{Clock, EpochMillis};
use crate::config::ConfigError;
use crate::event::{parse_head, EnvelopeError};
use crate::queue::{EventQueue, QueuedEvent};
use crate::secrets::{CachedSecret, Refresh};
use crate::signature::{SecretError, Verifier, VerifyError};

pub use crate::queue::sqs_body_allowed;
pub use config::ReceiverConfig;

/// SQS accepts 1 MiB per message, attributes included; keep room for ours.
pub const MAX_BODY_BYTES: usize = 1024 * 1024 - 4 * 1024;

/// By default a signature mismatch re-reads the webhook secret only if the last read began
/// this long ago (`WORKOS_WEBHOOK_SECRET_REFRESH_SECS`).
pub const SECRET_REFRESH_MIN_AGE: Duration = crate::secrets::DEFAULT_REFRESH_INTERVAL;
/// A signature that matches a secret list last read this many times `secret_refresh` ago
/// starts a background re-read (5 minutes by default), so a secret removed from Secrets Manager
/// stops being accepted within about that long.
pub const SECRET_MAX_AGE_FACTOR: u32 = 5;
/// The longest a request waits for that re-read. With the SQS budget (2.5 s) the answer still
/// comes well inside WorkOS's ~5 s and the function's 4 s timeout.
pub const SECRET_REFRESH_TIMEOUT: Duration = Duration::from_millis(1000);

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

    /// The `outcome` and `status` log fields of this outcome. The `WebhookRejected` metric filter
    /// in `infra/template.yaml` counts `rejected` (401) and `refused` with status 403 or 404:
    /// every request from a caller without the secret.
    pub fn log_fields(&self) -> (&'static str, u16) {
        let outcome = match self {
            Outcome::Queued { .. } => "queued",
            Outcome::Unauthorized(_) => "rejected",
            Outcome::Unavailable => "queue_error",
            Outcome::MethodNotAllowed
            | Outcome::NotFound
            | Outcome::Forbidden
            | Outcome::TooLarge
            | Outcome::BadRequest(_) => "refused",
        };
        (outcome, self.status().as_u16())
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

/// The verifier in use, with the version of the secret it was built from.
#[derive(Debug)]
struct HeldVerifier {
    verifier: Verifier,
    secret_version: u64,
}

/// The receiver core, generic over its queue and clock ports.
#[derive(Debug)]
pub struct Receiver<Q, C> {
    /// Replaced when a re-read of the secret finds a new value.
    verifier: ArcSwap<HeldVerifier>,
    /// Where the secret list is re-read from on a mismatch; `None` when it cannot change.
    secret: Option<Arc<CachedSecret>>,
    /// The shortest time between two re-reads.
    secret_refresh: Duration,
    queue: Q,
    clock: C,
    allowed_ips: Option<Vec<IpAddr>>,
    path_token: Option<String>,
}

impl<Q: EventQueue, C: Clock> Receiver<Q, C> {
    /// A receiver with a fixed verifier.
    pub fn new(verifier: Verifier, queue: Q, clock: C) -> Self {
        Receiver {
            verifier: ArcSwap::from_pointee(HeldVerifier {
                verifier,
                secret_version: 0,
            }),
            secret: None,
            secret_refresh: SECRET_REFRESH_MIN_AGE,
            queue,
            clock,
            allowed_ips: None,
            path_token: None,
        }
    }

    /// A receiver from its configuration and the secret list read at init. When the secret can
    /// change (Secrets Manager), a signature mismatch re-reads it (see [`Self::with_secret`]).
    pub fn from_config(config: ReceiverConfig, secret: CachedSecret, queue: Q, clock: C) -> Result<Self, ConfigError> {
        let current = secret.current();
        let verifier = config::verifier_from_list(&config.secret, current.value.expose(), config.tolerance)?;
        Ok(Receiver {
            verifier: ArcSwap::from_pointee(HeldVerifier {
                verifier,
                secret_version: current.version,
            }),
            secret: secret.can_change().then(|| Arc::new(secret)),
            secret_refresh: config.secret_refresh,
            queue,
            clock,
            allowed_ips: config.allowed_ips,
            path_token: config.path_token,
        })
    }

    /// Verify with the comma-separated list `secret` holds (same tolerance), and re-read it when
    /// a signature matches none of its secrets: at most once per [`SECRET_REFRESH_MIN_AGE`] (or
    /// [`Self::with_secret_refresh`]), waiting at most [`SECRET_REFRESH_TIMEOUT`].
    pub fn with_secret(mut self, secret: CachedSecret) -> Result<Self, SecretError> {
        let current = secret.current();
        let verifier = Verifier::from_list(current.value.expose(), self.verifier.load().verifier.tolerance())?;
        self.verifier = ArcSwap::from_pointee(HeldVerifier {
            verifier,
            secret_version: current.version,
        });
        self.secret = secret.can_change().then(|| Arc::new(secret));
        Ok(self)
    }

    /// The shortest time between two re-reads of the secret.
    pub fn with_secret_refresh(mut self, min_age: Duration) -> Self {
        self.secret_refresh = min_age;
        self
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
        let signed_at = match self.verify(req.headers, req.body).await {
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
        // serde_json accepted it, so it is UTF-8. SQS refuses some code points in a body: such a
        // body travels base64-encoded (`body_encoding=base64`) rather than being turned away.
        let Ok(raw) = std::str::from_utf8(req.body) else {
            return Outcome::BadRequest("body is not UTF-8");
        };
        let (body, encoding) = QueuedEvent::encode_body(raw);
        if body.len() > MAX_BODY_BYTES {
            return Outcome::TooLarge;
        }
        let queued = QueuedEvent {
            body,
            encoding,
            event_id: head.id,
            event_type: head.event,
            signed_at,
            directory_id: head.directory_id,
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

    /// Verify the signature. When the secret can change (Secrets Manager):
    /// - a signature that matches none of the secrets re-reads the list (at most once per
    ///   `secret_refresh`, waiting at most [`SECRET_REFRESH_TIMEOUT`]) and is verified once
    ///   more if that brought a new list: a secret added in Secrets Manager is accepted at once;
    /// - a match with a list last read more than [`SECRET_MAX_AGE_FACTOR`] × `secret_refresh` ago
    ///   re-reads it in the background, so a secret removed in Secrets Manager stops being
    ///   accepted even by an instance that sees no mismatch. The request does not wait for it.
    async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<EpochMillis, VerifyError> {
        let held = self.current_verifier();
        let first = held.verifier.verify_headers(headers, body, self.clock.now());
        let Some(secret) = &self.secret else {
            return first;
        };
        match first {
            Err(VerifyError::NoMatch) => {}
            Ok(_) => {
                let max_age = self.secret_refresh.saturating_mul(SECRET_MAX_AGE_FACTOR);
                if secret.age() >= max_age {
                    refresh_in_background(secret.clone(), max_age);
                }
                return first;
            }
            Err(_) => return first,
        }
        self.refresh(secret).await;
        let newer = self.current_verifier();
        if newer.secret_version == held.secret_version {
            return first;
        }
        newer.verifier.verify_headers(headers, body, self.clock.now())
    }

    /// Re-read the secret if due (bounded by [`SECRET_REFRESH_TIMEOUT`]); logs no secret.
    async fn refresh(&self, secret: &CachedSecret) {
        let refreshed = tokio::time::timeout(
            SECRET_REFRESH_TIMEOUT,
            secret.refresh_if_older_than(self.secret_refresh),
        )
        .await;
        match refreshed {
            Ok(r) => log_refresh(secret, r, "a signature matched none of its secrets"),
            Err(_) => tracing::warn!(
                outcome = "secret_refresh_failed",
                timeout_ms = u64::try_from(SECRET_REFRESH_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
                "webhook secret re-read timed out; keeping the current one"
            ),
        }
    }

    /// The verifier for the newest secret value read; rebuilt here when the secret was re-read
    /// since (by this request, a concurrent one, or a background refresh).
    fn current_verifier(&self) -> Arc<HeldVerifier> {
        let held = self.verifier.load_full();
        let Some(secret) = &self.secret else {
            return held;
        };
        let current = secret.current();
        if current.version <= held.secret_version {
            return held;
        }
        let verifier = match Verifier::from_list(current.value.expose(), held.verifier.tolerance()) {
            Ok(v) => v,
            Err(SecretError::Empty) => {
                tracing::warn!(
                    outcome = "secret_refresh_failed",
                    version = current.version,
                    "the re-read webhook secret holds no secret; keeping the current one"
                );
                return held;
            }
        };
        let newer = Arc::new(HeldVerifier {
            verifier,
            secret_version: current.version,
        });
        // Never replace a verifier with one built from an older secret version.
        let previous = self.verifier.rcu(|cur| {
            if cur.secret_version >= newer.secret_version {
                cur.clone()
            } else {
                newer.clone()
            }
        });
        if previous.secret_version >= newer.secret_version {
            previous
        } else {
            newer
        }
    }

    /// Decide and log the outcome (never the body, the signature or the secret).
    pub async fn handle(&self, req: Inbound<'_>) -> Outcome {
        let outcome = self.decide(req).await;
        let (log_outcome, log_status) = outcome.log_fields();
        match &outcome {
            Outcome::Queued {
                event_id,
                event_type,
                message_id,
            } => tracing::info!(
                outcome = log_outcome,
                event_id = %event_id,
                event_type = %event_type,
                message_id = %message_id,
                "webhook queued"
            ),
            Outcome::Unauthorized(e) => tracing::warn!(
                outcome = log_outcome,
                status = log_status,
                reason = e.kind(),
                source_ip = %req.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                "webhook rejected"
            ),
            Outcome::Unavailable => {}
            other => tracing::warn!(
                outcome = log_outcome,
                status = log_status,
                reason = other.public_message(),
                source_ip = %req.source_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                "webhook refused"
            ),
        }
        outcome
    }
}

fn log_refresh(secret: &CachedSecret, result: Result<Refresh, crate::secrets::SecretReadError>, why: &'static str) {
    match result {
        Ok(Refresh::NotDue) => {}
        Ok(r) => tracing::info!(
            outcome = "secret_refreshed",
            changed = r == Refresh::Changed,
            version = secret.version(),
            why,
            "webhook secret re-read"
        ),
        Err(e) => tracing::warn!(
            outcome = "secret_refresh_failed",
            error = %e,
            "webhook secret re-read failed; keeping the current one"
        ),
    }
}

/// Start a re-read without waiting for it (skipped outside a tokio runtime).
fn refresh_in_background(secret: Arc<CachedSecret>, min_age: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let result = tokio::time::timeout(SECRET_REFRESH_TIMEOUT, secret.refresh_if_older_than(min_age)).await;
        match result {
            Ok(r) => log_refresh(&secret, r, "the secret list reached its maximum age"),
            Err(_) => tracing::warn!(
                outcome = "secret_refresh_failed",
                "webhook secret background re-read timed out; keeping the current one"
            ),
        }
    });
}

/// A receiver shared between concurrent requests.
pub type SharedReceiver<Q, C> = Arc<Receiver<Q, C>>;

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
    use crate::queue::{decode_body, BodyEncoding, MemoryQueue};
    use crate::secrets::MemorySecret;
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
        assert!(r.queue().sent().is_empty());
    }

    #[tokio::test]
    async fn a_body_sqs_refuses_is_queued_base64_not_refused() {
        let r = receiver();
        // JSON allows U+FFFE and U+FFFF raw in a string (control characters only escaped).
        let raw = "{\"id\":\"e\",\"event\":\"x\",\"n\":\"\u{FFFE}\u{FFFF}\",\"c\":\"\\u0001\"}";
        let out = post(&r, &signed(raw.as_bytes()), raw.as_bytes()).await;
        assert_eq!(out.status(), StatusCode::OK, "{out:?}");
        let sent = r.queue().sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].encoding, BodyEncoding::Base64);
        let back = decode_body(&sent[0].body, sent[0].encoding.attribute()).expect("decodes");
        assert_eq!(back.as_bytes(), raw.as_bytes());
        // An ordinary body stays raw.
        post(&r, &signed(BODY), BODY).await;
        assert_eq!(r.queue().sent()[1].encoding, BodyEncoding::Raw);
    }

    #[tokio::test]
    async fn a_base64_body_over_the_queue_limit_is_413() {
        let r = receiver();
        let raw = format!(
            "{{\"id\":\"e\",\"event\":\"x\",\"n\":\"\u{FFFE}{}\"}}",
            "a".repeat(MAX_BODY_BYTES - 100)
        );
        assert!(raw.len() <= MAX_BODY_BYTES);
        let out = post(&r, &signed(raw.as_bytes()), raw.as_bytes()).await;
        assert_eq!(out.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(r.queue().sent().is_empty());
    }

    #[tokio::test]
    async fn the_directory_id_is_carried_for_routing() {
        let r = receiver();
        let body = br#"{"id":"e1","event":"dsync.user.updated","data":{"object":"directory_user","id":"u","directory_id":"directory_7"}}"#;
        assert_eq!(post(&r, &signed(body), body).await.status(), StatusCode::OK);
        post(&r, &signed(BODY), BODY).await;
        let sent = r.queue().sent();
        assert_eq!(sent[0].directory_id.as_deref(), Some("directory_7"));
        assert_eq!(sent[0].message_group_id(), "directory_7");
        assert_eq!(sent[1].directory_id, None);
        assert_eq!(sent[1].message_group_id(), crate::queue::NO_DIRECTORY_GROUP);
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
    fn responses_are_json_with_headers() {
        let resp: http::Response<String> = Outcome::MethodNotAllowed.into_response();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[http::header::ALLOW], "POST");
        assert_eq!(resp.headers()[http::header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_str(resp.body()).expect("json");
        assert_eq!(v["message"], "method not allowed");
    }

    fn signed_at(secret: &str, at: EpochMillis, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "workos-signature",
            signature_header(secret, at, body).parse().expect("header"),
        );
        h
    }

    async fn rotating(mem: &MemorySecret) -> (Receiver<MemoryQueue, ManualClock>, ManualClock) {
        let clock = ManualClock::at(T0);
        let secret = CachedSecret::load(mem.clone(), clock.clone()).await.expect("load");
        let r = Receiver::new(
            Verifier::new(["unused"], DEFAULT_TOLERANCE).expect("v"),
            MemoryQueue::default(),
            clock.clone(),
        )
        .with_secret(secret)
        .expect("secret list");
        (r, clock)
    }

    #[tokio::test]
    async fn a_mismatch_re_reads_the_secret_at_most_once_a_minute() {
        let mem = MemorySecret::with("whsec_old");
        let (r, clock) = rotating(&mem).await;
        let at = |c: &ManualClock, s: &str| signed_at(s, c.now(), BODY);
        assert_eq!(post(&r, &at(&clock, "whsec_old"), BODY).await.status(), StatusCode::OK);
        // WorkOS switched before the secret was stored: rejected, and not re-read (just loaded).
        assert_eq!(
            post(&r, &at(&clock, "whsec_new"), BODY).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(mem.reads(), 1);
        mem.set("whsec_old,whsec_new");
        clock.advance(SECRET_REFRESH_MIN_AGE - Duration::from_secs(1));
        assert_eq!(
            post(&r, &at(&clock, "whsec_new"), BODY).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(mem.reads(), 1);
        // A minute after the last read: re-read, and the same request verifies.
        clock.advance(Duration::from_secs(1));
        assert_eq!(post(&r, &at(&clock, "whsec_new"), BODY).await.status(), StatusCode::OK);
        assert_eq!(mem.reads(), 2);
        assert_eq!(post(&r, &at(&clock, "whsec_old"), BODY).await.status(), StatusCode::OK);
        // A probe with a wrong secret right after costs no read.
        assert_eq!(
            post(&r, &at(&clock, "whsec_wrong"), BODY).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(mem.reads(), 2);
        // The old secret is removed: the next mismatch a minute later re-reads the list, and
        // from then on the old secret is refused.
        mem.set("whsec_new");
        clock.advance(SECRET_REFRESH_MIN_AGE);
        assert_eq!(post(&r, &at(&clock, "whsec_old"), BODY).await.status(), StatusCode::OK);
        assert_eq!(
            post(&r, &at(&clock, "whsec_wrong"), BODY).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(mem.reads(), 3);
        assert_eq!(
            post(&r, &at(&clock, "whsec_old"), BODY).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(post(&r, &at(&clock, "whsec_new"), BODY).await.status(), StatusCode::OK);
        assert_eq!(mem.reads(), 3);
        // Other failures never cost a read.
        clock.advance(SECRET_REFRESH_MIN_AGE);
        assert_eq!(
            post(&r, &HeaderMap::new(), BODY).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let stale = signed_at(
            "whsec_new",
            clock.now().saturating_sub(DEFAULT_TOLERANCE + Duration::from_secs(1)),
            BODY,
        );
        assert_eq!(post(&r, &stale, BODY).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(mem.reads(), 3);
    }

    #[tokio::test]
    async fn an_old_list_is_re_read_in_the_background_so_a_removed_secret_stops_working() {
        let mem = MemorySecret::with("whsec_old,whsec_new");
        let (r, clock) = rotating(&mem).await;
        mem.set("whsec_new");
        let max_age = SECRET_REFRESH_MIN_AGE * SECRET_MAX_AGE_FACTOR;
        clock.advance(max_age - Duration::from_secs(1));
        assert_eq!(
            post(&r, &signed_at("whsec_old", clock.now(), BODY), BODY)
                .await
                .status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(mem.reads(), 1, "not yet at the maximum age");
        clock.advance(Duration::from_secs(1));
        // Still accepted (the request does not wait), but it starts a re-read.
        assert_eq!(
            post(&r, &signed_at("whsec_old", clock.now(), BODY), BODY)
                .await
                .status(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(mem.reads(), 2);
        assert_eq!(
            post(&r, &signed_at("whsec_old", clock.now(), BODY), BODY)
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            post(&r, &signed_at("whsec_new", clock.now(), BODY), BODY)
                .await
                .status(),
            StatusCode::OK
        );
        assert_eq!(mem.reads(), 2);
    }

    #[tokio::test]
    async fn concurrent_mismatches_share_one_re_read_and_all_verify() {
        let mem = MemorySecret::with("whsec_old").delayed(Duration::from_millis(20));
        let (r, clock) = rotating(&mem).await;
        mem.set("whsec_old,whsec_new");
        clock.advance(SECRET_REFRESH_MIN_AGE);
        let h = signed_at("whsec_new", clock.now(), BODY);
        let outs = futures::future::join_all((0..8).map(|_| post(&r, &h, BODY))).await;
        assert!(outs.iter().all(|o| o.status() == StatusCode::OK), "{outs:?}");
        assert_eq!(mem.reads(), 2);
    }

    #[tokio::test]
    async fn a_slow_or_failing_re_read_keeps_the_old_secret_and_answers_in_time() {
        let mem = MemorySecret::with("whsec_old");
        let (r, clock) = rotating(&mem).await;
        // Reads from now on take three times the budget.
        mem.set_delay(SECRET_REFRESH_TIMEOUT * 3);
        mem.set("whsec_old,whsec_new");
        clock.advance(SECRET_REFRESH_MIN_AGE);
        let started = std::time::Instant::now();
        let out = post(&r, &signed_at("whsec_new", clock.now(), BODY), BODY).await;
        assert_eq!(out.status(), StatusCode::UNAUTHORIZED);
        assert!(
            started.elapsed() < SECRET_REFRESH_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        let out = post(&r, &signed_at("whsec_old", clock.now(), BODY), BODY).await;
        assert_eq!(out.status(), StatusCode::OK);
        assert_eq!(mem.reads(), 2);

        // A failing read: the old secret stays, and no second read within the minute.
        mem.set_delay(Duration::ZERO);
        mem.fail();
        clock.advance(SECRET_REFRESH_MIN_AGE);
        for _ in 0..3 {
            let out = post(&r, &signed_at("whsec_new", clock.now(), BODY), BODY).await;
            assert_eq!(out.status(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(mem.reads(), 3);
        assert_eq!(
            post(&r, &signed_at("whsec_old", clock.now(), BODY), BODY)
                .await
                .status(),
            StatusCode::OK
        );
    }

    #[test]
    fn log_fields_per_outcome() {
        let queued = Outcome::Queued {
            event_id: "e".into(),
            event_type: "t".into(),
            message_id: "m".into(),
        };
        assert_eq!(queued.log_fields(), ("queued", 200));
        assert_eq!(
            Outcome::Unauthorized(VerifyError::NoMatch).log_fields(),
            ("rejected", 401)
        );
        assert_eq!(Outcome::Forbidden.log_fields(), ("refused", 403));
        assert_eq!(Outcome::NotFound.log_fields(), ("refused", 404));
        assert_eq!(Outcome::MethodNotAllowed.log_fields(), ("refused", 405));
        assert_eq!(Outcome::TooLarge.log_fields(), ("refused", 413));
        assert_eq!(Outcome::BadRequest("x").log_fields(), ("refused", 400));
        assert_eq!(Outcome::Unavailable.log_fields(), ("queue_error", 503));
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `WebhookRejectedMetricFilter` in infra/template.yaml matches:
    /// `{ ($.fields.outcome = "rejected") || ($.fields.outcome = "refused" && ($.fields.status = 403 || $.fields.status = 404)) }`
    /// (`status` compared as a number, so it must be logged as one).
    fn metric_filter_matches(line: &serde_json::Value) -> bool {
        let outcome = line["fields"]["outcome"].as_str();
        let status = line["fields"]["status"].as_u64();
        outcome == Some("rejected") || (outcome == Some("refused") && matches!(status, Some(403 | 404)))
    }

    #[tokio::test]
    async fn json_logs_carry_what_the_rejected_metric_filter_counts() {
        use lambda_http::tracing::subscriber;
        let buf = LogBuffer::default();
        let writer = buf.clone();
        // As lambda_runtime's default subscriber with AWS_LAMBDA_LOG_FORMAT=JSON.
        let sub = subscriber::fmt()
            .with_target(false)
            .without_time()
            .with_writer(move || writer.clone())
            .json()
            .finish();
        let _guard = tracing::subscriber::set_default(sub);

        let allowed: IpAddr = "3.217.146.166".parse().expect("ip");
        let elsewhere: IpAddr = "10.0.0.1".parse().expect("ip");
        let r = receiver()
            .with_allowed_ips(Some(vec![allowed]))
            .with_path_token(Some("s3cr3t-path-token-123".into()));
        let (good, none, not_event) = (signed(BODY), HeaderMap::new(), signed(b"{}"));
        let ok_path = "/webhooks/workos/s3cr3t-path-token-123";
        let cases: [(&str, IpAddr, &HeaderMap, &[u8], u16); 5] = [
            (ok_path, allowed, &good, BODY, 200),
            ("/webhooks/workos/wrong", allowed, &good, BODY, 404),
            (ok_path, elsewhere, &good, BODY, 403),
            (ok_path, allowed, &none, BODY, 401),
            (ok_path, allowed, &not_event, b"{}", 400),
        ];
        for (path, ip, headers, body, want) in cases {
            let req = Inbound {
                method: &Method::POST,
                path,
                headers,
                body,
                source_ip: Some(ip),
            };
            assert_eq!(r.handle(req).await.status().as_u16(), want);
        }
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|e| e.into_inner()).clone()).expect("utf8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON log line"))
            .collect();
        assert_eq!(lines.len(), 5, "{text}");
        let counted: Vec<u64> = lines
            .iter()
            .filter(|l| metric_filter_matches(l))
            .map(|l| l["fields"]["status"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(counted, vec![404, 403, 401], "{text}");
        for l in &lines {
            assert!(
                l["fields"]["status"].is_u64() || l["fields"]["outcome"] == "queued",
                "{l}"
            );
        }
        assert!(
            !text.contains(SECRET) && !text.contains("s3cr3t-path-token-123"),
            "{text}"
        );
    }
}
