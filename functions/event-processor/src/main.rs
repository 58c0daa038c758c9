//! event-processor: SQS-triggered. Claims each WorkOS event once (DynamoDB conditional put),
//! re-reads what it names from the WorkOS API, rewrites the directory picture and entitlements.
//!
//! All configuration is read and checked before the runtime starts; clients are built once.

use std::process::ExitCode;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use dsync::aws::{load_sdk_config, DynamoClient, SdkBudget};
use dsync::claims::DynamoClaimStore;
use dsync::clock::{EpochMillis, SystemClock};
use dsync::config::ProcessEnv;
use dsync::processor::config::ProcessorEnv;
use dsync::processor::{lambda, Processor};
use dsync::state::DynamoStateStore;
use dsync::workos::{WorkosClient, WorkosConfig};
use lambda_runtime::{service_fn, LambdaEvent};

#[tokio::main]
async fn main() -> ExitCode {
    lambda_runtime::tracing::init_default_subscriber();
    let env = match ProcessorEnv::from_env(&ProcessEnv) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("event-processor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let mut workos = WorkosConfig::new(env.api_key.expose());
    workos.base_url = env.api_base_url.clone();
    let api = match WorkosClient::new(workos, SystemClock) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("event-processor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let sdk = load_sdk_config(SdkBudget::WORKER).await;
    let dynamo = DynamoClient::new(&sdk);
    let processor = Arc::new(Processor::new(
        api,
        DynamoClaimStore::new(dynamo.clone(), env.events_table),
        DynamoStateStore::new(dynamo, env.state_table),
        SystemClock,
        env.config,
    ));

    let result = lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let processor = processor.clone();
        async move {
            let deadline = EpochMillis(event.context.deadline);
            Ok::<SqsBatchResponse, lambda_runtime::Error>(lambda::handle(&processor, event.payload, deadline).await)
        }
    }))
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "processor stopped");
            ExitCode::FAILURE
        }
    }
}
