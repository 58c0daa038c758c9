//! Webhook delivery: every recorded event is POSTed, signed, to the configured URL from a
//! background task, with switches to duplicate, delay, hold-and-reverse, drop or pause deliveries.
//!
//! The mode is captured when an event is recorded, so flipping a switch never changes what
//! happens to events recorded before it.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dsync::clock::{Clock, SystemClock};
use dsync::signature::signature_header;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::events::Event;
use crate::lock;

/// Where and how to deliver.
#[derive(Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: String,
    /// Extra attempts after a non-2xx answer or a transport error.
    pub max_retries: u32,
    /// Wait before the first retry; doubles each retry.
    pub retry_backoff: Duration,
}

impl WebhookConfig {
    /// Two retries, 50 ms apart then 100 ms.
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        WebhookConfig {
            url: url.into(),
            secret: secret.into(),
            max_retries: 2,
            retry_backoff: Duration::from_millis(50),
        }
    }

    pub fn retries(mut self, max_retries: u32, backoff: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_backoff = backoff;
        self
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &"[REDACTED]")
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .finish()
    }
}

/// Delivery switches. The default delivers each event once, immediately, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeliveryMode {
    /// Send each event this many times (0 is treated as 1).
    pub duplicate: u32,
    /// Wait this long before sending each event.
    #[serde(rename = "delay_ms", serialize_with = "as_millis")]
    pub delay: Duration,
    /// Hold events; a flush sends the held batch in reverse order.
    pub reorder: bool,
    /// Record events but never send them.
    pub drop: bool,
    /// Hold events until flushed (in order, unless `reorder`).
    pub paused: bool,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for DeliveryMode {
    fn default() -> Self {
        DeliveryMode {
            duplicate: 1,
            delay: Duration::ZERO,
            reorder: false,
            drop: false,
            paused: false,
        }
    }
}

impl DeliveryMode {
    fn holds(&self) -> bool {
        self.paused || self.reorder
    }
}

/// One POST attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub event: String,
    /// Which copy (1-based) when duplicating.
    pub copy: u32,
    /// Attempt number for this copy (1 = first try).
    pub attempt: u32,
    /// The receiver's status, or `None` when the request failed in transport.
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl DeliveryRecord {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

enum Cmd {
    Event(Box<Event>, DeliveryMode),
    Flush { reverse: bool },
}

struct Inner {
    webhook: Mutex<Option<WebhookConfig>>,
    mode: Mutex<DeliveryMode>,
    records: Mutex<Vec<DeliveryRecord>>,
    dropped: Mutex<Vec<String>>,
    held: AtomicUsize,
    /// Commands sent to the worker and not yet finished.
    pending: AtomicUsize,
}

/// The delivery queue and its background worker.
pub(crate) struct Delivery {
    tx: mpsc::UnboundedSender<Cmd>,
    inner: Arc<Inner>,
}

impl Delivery {
    /// Spawn the worker on the current tokio runtime. It stops when this handle is dropped.
    pub fn start(webhook: Option<WebhookConfig>) -> Self {
        let inner = Arc::new(Inner {
            webhook: Mutex::new(webhook),
            mode: Mutex::new(DeliveryMode::default()),
            records: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            held: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        tokio::spawn(run(rx, Arc::clone(&inner), client));
        Delivery { tx, inner }
    }

    fn send(&self, cmd: Cmd) {
        self.inner.pending.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(cmd).is_err() {
            self.inner.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Queue an event under the current mode.
    pub fn enqueue(&self, event: Event) {
        let mode = *lock(&self.inner.mode);
        self.send(Cmd::Event(Box::new(event), mode));
    }

    pub fn mode(&self) -> DeliveryMode {
        *lock(&self.inner.mode)
    }

    /// Change the switches. Turning the last holding switch off flushes what was held, in order.
    pub fn set_mode(&self, mode: DeliveryMode) {
        let old = std::mem::replace(&mut *lock(&self.inner.mode), mode);
        if old.holds() && !mode.holds() {
            self.send(Cmd::Flush { reverse: false });
        }
    }

    /// Send everything held, reversed if `reorder` is on.
    pub fn flush(&self) {
        let reverse = self.mode().reorder;
        self.send(Cmd::Flush { reverse });
    }

    pub fn webhook(&self) -> Option<WebhookConfig> {
        lock(&self.inner.webhook).clone()
    }

    pub fn set_webhook(&self, webhook: Option<WebhookConfig>) {
        *lock(&self.inner.webhook) = webhook;
    }

    pub fn records(&self) -> Vec<DeliveryRecord> {
        lock(&self.inner.records).clone()
    }

    pub fn dropped(&self) -> Vec<String> {
        lock(&self.inner.dropped).clone()
    }

    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// Forget delivery records and dropped ids (held events stay held).
    pub fn clear(&self) {
        lock(&self.inner.records).clear();
        lock(&self.inner.dropped).clear();
    }

    /// Wait until the worker has finished everything queued (held events excluded).
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.inner.pending.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Cmd>, inner: Arc<Inner>, client: reqwest::Client) {
    let mut held: Vec<(Box<Event>, DeliveryMode)> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Cmd::Event(event, mode) if mode.drop => lock(&inner.dropped).push(event.id.clone()),
            Cmd::Event(event, mode) if mode.holds() => {
                held.push((event, mode));
                inner.held.store(held.len(), Ordering::SeqCst);
            }
            Cmd::Event(event, mode) => deliver(&inner, &client, &event, mode).await,
            Cmd::Flush { reverse } => {
                let mut batch = std::mem::take(&mut held);
                inner.held.store(0, Ordering::SeqCst);
                if reverse {
                    batch.reverse();
                }
                for (event, mode) in batch {
                    deliver(&inner, &client, &event, mode).await;
                }
            }
        }
        inner.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn deliver(inner: &Inner, client: &reqwest::Client, event: &Event, mode: DeliveryMode) {
    let Some(hook) = lock(&inner.webhook).clone() else {
        return;
    };
    if !mode.delay.is_zero() {
        tokio::time::sleep(mode.delay).await;
    }
    let body = event.to_body();
    for copy in 1..=mode.duplicate.max(1) {
        let mut backoff = hook.retry_backoff;
        for attempt in 1..=hook.max_retries.saturating_add(1) {
            let signature = signature_header(&hook.secret, SystemClock.now(), &body);
            let result = client
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("WorkOS-Signature", signature)
                .body(body.clone())
                .send()
                .await;
            let (status, error) = match result {
                Ok(resp) => (Some(resp.status().as_u16()), None),
                Err(e) => (None, Some(e.to_string())),
            };
            let record = DeliveryRecord {
                event_id: event.id.clone(),
                event: event.event.clone(),
                copy,
                attempt,
                status,
                error,
            };
            let ok = record.succeeded();
            lock(&inner.records).push(record);
            if ok || attempt > hook.max_retries {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
}
