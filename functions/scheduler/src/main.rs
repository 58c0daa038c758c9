//! scheduler: on a schedule (every 6 hours by default), lists the account's directories and
//! queues a reconcile request for each active one, a purge request for each one WorkOS no longer
//! has, and a continuation for each job left behind (`dsync::scheduler`).
//!
//! All configuration is read and checked, the API key read from Secrets Manager, and every
//! client built before the runtime starts.

use std::process::ExitCode;
use std::sync::Arc;

use dsync::clock::{EpochMillis, SystemClock};
use dsync::config::ProcessEnv;
use dsync::scheduler::{Scheduler, SchedulerEnv};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> ExitCode {
    lambda_runtime::tracing::init_default_subscriber();
    let (config, clients) = match dsync::worker::boot(
        "scheduler",
        SchedulerEnv::from_env(&ProcessEnv).map(|e| (e.worker, e.config)),
    )
    .await
    {
        Ok(started) => started,
        Err(code) => return code,
    };
    let scheduler = Arc::new(Scheduler::new(
        clients.api,
        clients.state,
        clients.queue,
        SystemClock,
        config,
    ));

    let result = lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let scheduler = scheduler.clone();
        async move {
            let deadline = EpochMillis(event.context.deadline);
            match scheduler.run(deadline).await {
                // Refused purges need an operator: fail the invocation so the Errors alarm fires.
                Ok(report) if report.purges_refused > 0 => Err(lambda_runtime::Error::from(format!(
                    "refused to purge {} directories WorkOS no longer lists (wrong API key?)",
                    report.purges_refused
                ))),
                Ok(report) => Ok(serde_json::json!({ "outcome": "scheduled", "report": report })),
                Err(e) => Err(lambda_runtime::Error::from(e.to_string())),
            }
        }
    }))
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scheduler stopped");
            ExitCode::FAILURE
        }
    }
}
