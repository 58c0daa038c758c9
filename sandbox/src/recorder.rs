//! A tiny webhook receiver for tests: records every POST (headers and raw body) and answers 200,
//! or a scripted failure status.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::lock;

/// One received request.
#[derive(Debug, Clone)]
pub struct ReceivedWebhook {
    pub headers: HeaderMap,
    /// The body bytes exactly as received (what the signature covers).
    pub body: Vec<u8>,
    /// The status the recorder answered.
    pub answered: u16,
}

impl ReceivedWebhook {
    /// The `WorkOS-Signature` header value.
    pub fn signature(&self) -> Option<&str> {
        self.headers.get(dsync::signature::HEADER).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn event_id(&self) -> Option<String> {
        self.json()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
    }

    pub fn event_type(&self) -> Option<String> {
        self.json()
            .and_then(|v| v.get("event").and_then(Value::as_str).map(str::to_owned))
    }
}

#[derive(Default)]
struct Inner {
    received: Mutex<Vec<ReceivedWebhook>>,
    failures: Mutex<VecDeque<u16>>,
}

/// Listens on 127.0.0.1 (free port); every path accepts POST. Stops when dropped.
pub struct WebhookRecorder {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: JoinHandle<()>,
}

impl WebhookRecorder {
    pub async fn start() -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(Arc::clone(&inner));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "webhook recorder stopped");
            }
        });
        Ok(WebhookRecorder { addr, inner, server })
    }

    /// `http://127.0.0.1:PORT/webhooks/workos`.
    pub fn url(&self) -> String {
        format!("http://{}/webhooks/workos", self.addr)
    }

    pub fn received(&self) -> Vec<ReceivedWebhook> {
        lock(&self.inner.received).clone()
    }

    /// Event ids in arrival order (duplicates included).
    pub fn event_ids(&self) -> Vec<String> {
        self.received().iter().filter_map(ReceivedWebhook::event_id).collect()
    }

    /// Answer the next `n` requests with `status` instead of 200.
    pub fn fail_next(&self, n: usize, status: u16) {
        lock(&self.inner.failures).extend(std::iter::repeat_n(status, n));
    }

    pub fn clear(&self) {
        lock(&self.inner.received).clear();
    }

    /// Wait until at least `n` requests arrived; `false` on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while lock(&self.inner.received).len() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

impl Drop for WebhookRecorder {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = lock(&inner.failures)
        .pop_front()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    lock(&inner.received).push(ReceivedWebhook {
        headers,
        body: body.to_vec(),
        answered: status.as_u16(),
    });
    status
}
