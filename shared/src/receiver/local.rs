//! The receiver over plain HTTP (`LISTEN_ADDR`): `POST /webhooks/workos[/{token}]`, same core.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::routing::{any, get};
use axum::Router;

use super::{Inbound, Receiver, MAX_BODY_BYTES};
use crate::clock::Clock;
use crate::queue::EventQueue;

async fn webhook<Q: EventQueue, C: Clock>(
    State(receiver): State<Arc<Receiver<Q, C>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inbound = Inbound {
        method: &method,
        path: uri.path(),
        headers: &headers,
        body: &body,
        source_ip: Some(peer.ip()),
    };
    receiver.handle(inbound).await.into_response::<Body>()
}

/// The routes. Bodies up to twice the queue limit reach the core, which answers 413 itself.
pub fn router<Q: EventQueue, C: Clock>(receiver: Arc<Receiver<Q, C>>) -> Router {
    Router::new()
        .route("/webhooks/workos", any(webhook::<Q, C>))
        .route("/webhooks/workos/{token}", any(webhook::<Q, C>))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(2 * MAX_BODY_BYTES))
        .with_state(receiver)
}

/// Serve until `shutdown` resolves.
pub async fn serve<Q: EventQueue, C: Clock>(
    receiver: Arc<Receiver<Q, C>>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(receiver).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
