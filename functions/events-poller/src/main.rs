//! events-poller: on a schedule (every minute by default), reads WorkOS's `GET /events` from the
//! saved cursor and puts each event's exact JSON on the events queue, as the webhook receiver
//! would, so events whose webhook never arrived are processed all the same (`dsync::events_poller`).
//!
//! All configuration is read and checked, the API key read from Secrets Manager, and every
//! client built before the runtime starts.

use std::process::ExitCode;
use std::sync::Arc;

use dsync::clock::{EpochMillis, SystemClock};
use dsync::config::ProcessEnv;
use dsync::events_poller::{EventsPoller, EventsPollerEnv, Polled};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> ExitCode {
    lambda_runtime::tracing::init_default_subscriber();
    let (config, clients) = match dsync::worker::boot(
        "events-poller",
        EventsPollerEnv::from_env(&ProcessEnv).map(|e| (e.worker, e.config)),
    )
    .await
    {
        Ok(started) => started,
        Err(code) => return code,
    };
    let poller = Arc::new(EventsPoller::new(
        clients.api,
        clients.state,
        clients.queue,
        SystemClock,
        config,
    ));

    let result = lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let poller = poller.clone();
        async move {
            let deadline = EpochMillis(event.context.deadline);
            match poller.run(deadline).await {
                Ok(Polled::Busy) => Ok(serde_json::json!({ "outcome": "busy" })),
                Ok(Polled::Done(report)) => Ok(serde_json::json!({ "outcome": "polled", "report": report })),
                // Failing the invocation feeds the Errors alarm; the next run resumes from the cursor.
                Err(e) => Err(lambda_runtime::Error::from(e.to_string())),
            }
        }
    }))
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "events poller stopped");
            ExitCode::FAILURE
        }
    }
}
