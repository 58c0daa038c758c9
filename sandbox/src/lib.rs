//! A local stand-in for the WorkOS Directory Sync API (see `shared/reference/workos-api.md`).
//!
//! It serves the read API (`/directories`, `/directory_users`, `/directory_groups`, `/events`)
//! with WorkOS's shapes, pagination, errors and `/directory_users` rate limit; records the
//! `dsync.*` events each mutation would cause and delivers them as signed webhooks; and lets
//! tests count calls, inject faults and bend delivery (duplicate, delay, reorder, drop, pause).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use workos_sandbox::{Sandbox, SandboxConfig, SeedSpec};
//! let sb = Sandbox::start(SandboxConfig::new("sk_test")).await?;
//! let seeded = sb.seed_directory(SeedSpec::new("Acme").group("Enterprise Admins", 50));
//! println!("{} serves {}", sb.base_url(), seeded.directory_id);
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dsync::clock::{Clock, EpochMillis, SystemClock};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod delivery;
pub mod direct;
mod error;
mod events;
mod faults;
mod model;
mod pagination;
mod ratelimit;
pub mod recorder;
mod routes;
mod state;
mod stats;

pub use delivery::{DeliveryMode, DeliveryRecord, WebhookConfig};
pub use error::SandboxError;
pub use events::Event;
pub use faults::{Fault, ANY_ROUTE};
pub use model::{Directory, Group, User, UserState};
pub use state::{GroupSpec, NewUser, ScaleSeeded, ScaleSpec, SeedSpec, Seeded, SeededGroup, Store, UserUpdate};
pub use stats::CallStat;

use delivery::Delivery;
use faults::Faults;
use ratelimit::RateLimiter;
use stats::CallStats;

/// Route templates, as counted by [`Sandbox::calls`] and targeted by [`Sandbox::inject`].
pub mod route {
    pub const LIST_DIRECTORIES: &str = "GET /directories";
    pub const GET_DIRECTORY: &str = "GET /directories/{id}";
    pub const LIST_USERS: &str = "GET /directory_users";
    pub const GET_USER: &str = "GET /directory_users/{id}";
    pub const LIST_GROUPS: &str = "GET /directory_groups";
    pub const GET_GROUP: &str = "GET /directory_groups/{id}";
    pub const LIST_EVENTS: &str = "GET /events";
}

/// Lock an in-process mutex; a panic elsewhere while holding it leaves the data usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How to run a sandbox.
#[derive(Clone)]
pub struct SandboxConfig {
    /// The key clients must send as `Authorization: Bearer <key>`.
    pub api_key: String,
    /// Where to listen; port 0 picks a free one.
    pub bind: SocketAddr,
    /// `/directory_users` requests per rolling second per directory; `None` disables the limit.
    pub rate_limit_per_sec: Option<u32>,
    /// The rolling window of that limit (one second; shorter to run a benchmark faster with the
    /// same requests per window).
    pub rate_window: Duration,
    /// Requests per rolling minute for the API key, on every API route (WorkOS: 6,000); `None`
    /// disables it.
    pub key_limit_per_minute: Option<u32>,
    /// Where to deliver events, if anywhere.
    pub webhook: Option<WebhookConfig>,
    /// The clock that stamps recorded events.
    pub clock: Arc<dyn Clock>,
    /// Serve this state (shared with the caller) instead of a new one.
    pub store: Option<Arc<Mutex<Store>>>,
}

impl std::fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("bind", &self.bind)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("key_limit_per_minute", &self.key_limit_per_minute)
            .finish_non_exhaustive()
    }
}

impl SandboxConfig {
    /// Defaults (127.0.0.1, free port, WorkOS's 4 rps limit, no webhook) with this key.
    pub fn new(api_key: impl Into<String>) -> Self {
        SandboxConfig {
            api_key: api_key.into(),
            ..Default::default()
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            api_key: "sk_test_sandbox".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            rate_limit_per_sec: Some(4),
            rate_window: Duration::from_secs(1),
            key_limit_per_minute: Some(6000),
            webhook: None,
            clock: Arc::new(SystemClock),
            store: None,
        }
    }
}

/// State shared by the HTTP routes and the [`Sandbox`] handle.
pub(crate) struct Shared {
    pub api_key: Mutex<String>,
    pub store: Arc<Mutex<Store>>,
    pub limiter: Mutex<RateLimiter>,
    pub key_limiter: Mutex<RateLimiter>,
    pub clock: Arc<dyn Clock>,
    pub faults: Mutex<Faults>,
    pub stats: Mutex<CallStats>,
    pub delivery: Delivery,
    pub request_seq: AtomicU64,
}

impl Shared {
    /// Run a mutation at the current time and queue the events it recorded for delivery.
    pub fn mutate<T>(&self, f: impl FnOnce(&mut Store, EpochMillis) -> T) -> T {
        let mut store = lock(&self.store);
        let before = store.events.len();
        let out = f(&mut store, self.clock.now());
        // Queued under the store lock so delivery order is recording order.
        for e in &store.events[before..] {
            self.delivery.enqueue(e.clone());
        }
        out
    }
}

/// A running sandbox. Dropping it stops the server and the delivery worker.
pub struct Sandbox {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl Sandbox {
    /// Bind, spawn the server and the delivery worker on the current runtime, and return.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            api_key: Mutex::new(config.api_key),
            store: config.store.unwrap_or_default(),
            limiter: Mutex::new(RateLimiter::new(config.rate_limit_per_sec, config.rate_window)),
            key_limiter: Mutex::new(RateLimiter::new(
                config.key_limit_per_minute,
                config.rate_window.saturating_mul(60),
            )),
            clock: config.clock,
            faults: Mutex::new(Faults::default()),
            stats: Mutex::new(CallStats::default()),
            delivery: Delivery::start(config.webhook),
            request_seq: AtomicU64::new(0),
        });
        let app = routes::router(Arc::clone(&shared));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
                tracing::warn!(error = %e, "sandbox server stopped");
            }
        });
        Ok(Sandbox {
            shared,
            addr,
            shutdown: Some(tx),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`, to give clients as their base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api_key(&self) -> String {
        lock(&self.shared.api_key).clone()
    }

    /// Accept only this key from now on (a key rotation in the WorkOS dashboard).
    pub fn set_api_key(&self, key: impl Into<String>) {
        *lock(&self.shared.api_key) = key.into();
    }

    /// The served state, shared: mutate it directly (passing your own time) to script changes
    /// without webhook delivery.
    pub fn store(&self) -> Arc<Mutex<Store>> {
        Arc::clone(&self.shared.store)
    }

    /// Stop serving, waiting up to a second for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(Duration::from_secs(1), &mut server).await.is_err() {
                server.abort();
            }
        }
    }

    // ---- mutations (each records the events WorkOS would emit) ---------------------------------

    /// A large directory for benchmarks, without events (see [`Store::seed_scale`]).
    pub fn seed_scale(&self, spec: &ScaleSpec) -> ScaleSeeded {
        self.shared.mutate(|s, now| s.seed_scale(spec, now))
    }

    /// Create a directory with groups, users and memberships (`dsync.activated`, then the events
    /// of an initial sync).
    pub fn seed_directory(&self, spec: SeedSpec) -> Seeded {
        self.shared.mutate(|s, now| s.seed(&spec, now))
    }

    pub fn create_user(&self, directory_id: &str, user: NewUser) -> Result<String, SandboxError> {
        self.shared.mutate(|s, now| s.create_user(directory_id, &user, now))
    }

    /// Change names / e-mail (`dsync.user.updated`); `Ok(false)` if nothing changed.
    pub fn update_user(&self, user_id: &str, update: UserUpdate) -> Result<bool, SandboxError> {
        self.shared.mutate(|s, now| s.update_user(user_id, &update, now))
    }

    /// Deactivate / reactivate (`dsync.user.updated`); `Ok(false)` if already in that state.
    pub fn set_user_state(&self, user_id: &str, state: UserState) -> Result<bool, SandboxError> {
        self.shared.mutate(|s, now| s.set_user_state(user_id, state, now))
    }

    /// Hard delete (`dsync.user.deleted`).
    pub fn delete_user(&self, user_id: &str) -> Result<(), SandboxError> {
        self.shared.mutate(|s, now| s.delete_user(user_id, now))
    }

    pub fn create_group(&self, directory_id: &str, name: &str) -> Result<String, SandboxError> {
        self.shared.mutate(|s, now| s.create_group(directory_id, name, now))
    }

    /// `dsync.group.updated` with `previous_attributes: {name}`; `Ok(false)` if unchanged.
    pub fn rename_group(&self, group_id: &str, name: &str) -> Result<bool, SandboxError> {
        self.shared.mutate(|s, now| s.rename_group(group_id, name, now))
    }

    /// `dsync.group.deleted`; memberships vanish without `user_removed` events.
    pub fn delete_group(&self, group_id: &str) -> Result<(), SandboxError> {
        self.shared.mutate(|s, now| s.delete_group(group_id, now))
    }

    /// `dsync.group.user_added`; `Ok(false)` if already a member.
    pub fn add_member(&self, user_id: &str, group_id: &str) -> Result<bool, SandboxError> {
        self.shared.mutate(|s, now| s.add_member(user_id, group_id, now))
    }

    /// `dsync.group.user_removed`; `Ok(false)` if not a member.
    pub fn remove_member(&self, user_id: &str, group_id: &str) -> Result<bool, SandboxError> {
        self.shared.mutate(|s, now| s.remove_member(user_id, group_id, now))
    }

    /// `dsync.deleted` only; the directory's users and groups are gone.
    pub fn delete_directory(&self, directory_id: &str) -> Result<(), SandboxError> {
        self.shared.mutate(|s, now| s.delete_directory(directory_id, now))
    }

    // ---- reads ---------------------------------------------------------------------------------

    /// Every recorded event, oldest first.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.store).events().to_vec()
    }

    pub fn user(&self, user_id: &str) -> Option<User> {
        lock(&self.shared.store).user(user_id).cloned()
    }

    pub fn group(&self, group_id: &str) -> Option<Group> {
        lock(&self.shared.store).group(group_id).cloned()
    }

    /// Member ids of a group, in id order.
    pub fn members_of(&self, group_id: &str) -> Vec<String> {
        lock(&self.shared.store)
            .members_of(group_id)
            .into_iter()
            .map(|u| u.id.clone())
            .collect()
    }

    pub fn is_member(&self, user_id: &str, group_id: &str) -> bool {
        lock(&self.shared.store).is_member(user_id, group_id)
    }

    // ---- call counter --------------------------------------------------------------------------

    /// Requests to a route template (see [`route`]), whatever they answered.
    pub fn calls(&self, route: &str) -> u64 {
        lock(&self.shared.stats).calls(route)
    }

    pub fn calls_with_status(&self, route: &str, status: u16) -> u64 {
        lock(&self.shared.stats).calls_with_status(route, status)
    }

    pub fn call_stats(&self) -> Vec<CallStat> {
        lock(&self.shared.stats).rows()
    }

    pub fn reset_calls(&self) {
        lock(&self.shared.stats).reset();
    }

    // ---- faults and limits ---------------------------------------------------------------------

    /// The next `times` authorised requests to `route` (a template, or [`ANY_ROUTE`]) answer `fault`.
    pub fn inject(&self, route: &str, times: u32, fault: Fault) {
        lock(&self.shared.faults).inject(route, times, fault);
    }

    /// While on, every API route answers 503.
    pub fn set_outage(&self, on: bool) {
        lock(&self.shared.faults).set_outage(on);
    }

    /// Disarm all faults and end any outage.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Change the `/directory_users` limit (`None` disables it).
    pub fn set_rate_limit(&self, per_sec: Option<u32>) {
        lock(&self.shared.limiter).set_limit(per_sec);
    }

    /// Forget recent requests, so every directory starts with a full allowance.
    pub fn reset_rate_limit(&self) {
        lock(&self.shared.limiter).reset();
        lock(&self.shared.key_limiter).reset();
    }

    // ---- webhook delivery ----------------------------------------------------------------------

    /// Point delivery elsewhere (or nowhere) from now on.
    pub fn set_webhook(&self, webhook: Option<WebhookConfig>) {
        self.shared.delivery.set_webhook(webhook);
    }

    pub fn delivery_mode(&self) -> DeliveryMode {
        self.shared.delivery.mode()
    }

    /// Applies to events recorded from now on. Turning `paused`/`reorder` off flushes held events.
    pub fn set_delivery(&self, mode: DeliveryMode) {
        self.shared.delivery.set_mode(mode);
    }

    /// Edit the current mode in place, e.g. `sb.update_delivery(|m| m.drop = true)`.
    pub fn update_delivery(&self, f: impl FnOnce(&mut DeliveryMode)) {
        let mut mode = self.delivery_mode();
        f(&mut mode);
        self.set_delivery(mode);
    }

    /// Deliver held events now (reversed when `reorder` is on).
    pub fn flush_deliveries(&self) {
        self.shared.delivery.flush();
    }

    /// Every POST attempt so far, in order.
    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.delivery.records()
    }

    /// Ids of events recorded while `drop` was on.
    pub fn dropped_deliveries(&self) -> Vec<String> {
        self.shared.delivery.dropped()
    }

    /// Events currently held by `paused` / `reorder`.
    pub fn held_deliveries(&self) -> usize {
        self.shared.delivery.held()
    }

    pub fn clear_deliveries(&self) {
        self.shared.delivery.clear();
    }

    /// Wait until every queued event has been delivered (or dropped/held); `false` on timeout.
    pub async fn wait_deliveries(&self, timeout: Duration) -> bool {
        self.shared.delivery.wait_idle(timeout).await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
