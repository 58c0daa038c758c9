//! webhook-receiver: verify the WorkOS signature, enqueue the raw event to SQS, answer.
//!
//! All configuration is read and checked before serving, the webhook secret is read once (from
//! Secrets Manager with `WORKOS_WEBHOOK_SECRET_ARN`, or `WORKOS_WEBHOOK_SECRET` itself locally),
//! and the clients are built once. A signature that matches no secret re-reads the secret at most
//! once a minute, so a rotation needs no restart.
//! With `LISTEN_ADDR` set it serves plain HTTP instead of the Lambda runtime.

use std::process::ExitCode;
use std::sync::Arc;

use dsync::aws::{load_sdk_config, SdkBudget, SqsClient};
use dsync::clock::SystemClock;
use dsync::config::ProcessEnv;
use dsync::queue::SqsQueue;
use dsync::receiver::{lambda, local, Receiver, ReceiverConfig};
use dsync::secrets::CachedSecret;

#[tokio::main]
async fn main() -> ExitCode {
    lambda_http::tracing::init_default_subscriber();
    let config = match ReceiverConfig::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("webhook-receiver: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // One SDK configuration for SQS and Secrets Manager: the receiver's bounded budget.
    let sdk = load_sdk_config(SdkBudget::RECEIVER).await;
    let secret = match CachedSecret::from_source(&config.secret, &sdk, SystemClock).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the webhook secret");
            eprintln!("webhook-receiver: cannot read the webhook secret: {e}");
            return ExitCode::from(2);
        }
    };
    let queue = SqsQueue::new(SqsClient::new(&sdk), config.queue_url.clone());
    let listen_addr = config.listen_addr;
    let receiver = match Receiver::from_config(config, secret, queue, SystemClock) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("webhook-receiver: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };

    let result = match listen_addr {
        Some(addr) => serve_locally(receiver, addr).await,
        None => lambda::run(receiver).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "receiver stopped");
            ExitCode::FAILURE
        }
    }
}

async fn serve_locally<Q, C>(receiver: Arc<Receiver<Q, C>>, addr: std::net::SocketAddr) -> Result<(), String>
where
    Q: dsync::queue::EventQueue,
    C: dsync::clock::Clock,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%bound, "serving POST /webhooks/workos over plain HTTP");
    local::serve(receiver, listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
