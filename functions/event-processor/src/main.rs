//! event-processor: SQS-triggered. Claims each WorkOS event once, gets its directory's work done
//! under that directory's lease (re-reading WorkOS, rewriting facts and entitlements), and
//! completes the event only once its effects are applied.
//!
//! All configuration is read and checked, the API key read from Secrets Manager, and every
//! client built before the runtime starts.

use std::process::ExitCode;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use dsync::adapters::dynamo_budget::DynamoBudget;
use dsync::adapters::dynamo_claims::DynamoClaimStore;
use dsync::adapters::dynamo_state::DynamoStateStore;
use dsync::adapters::sqs_work::SqsWorkQueue;
use dsync::adapters::workos::{WorkosClient, WorkosConfig};
use dsync::aws::{load_sdk_config, DynamoClient, SdkBudget, SqsClient};
use dsync::clock::{EpochMillis, SystemClock};
use dsync::config::ProcessEnv;
use dsync::processor::config::ProcessorEnv;
use dsync::processor::{lambda, Processor};
use dsync::secrets::CachedSecret;
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
    let sdk = load_sdk_config(SdkBudget::WORKER).await;
    let key = match CachedSecret::from_source(&env.api_key, &sdk, SystemClock).await {
        Ok(k) => Arc::new(k),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the WorkOS API key");
            eprintln!("event-processor: cannot read the WorkOS API key: {e}");
            return ExitCode::from(2);
        }
    };
    let dynamo = DynamoClient::new(&sdk);
    let workos = WorkosConfig {
        base_url: env.api_base_url.clone(),
        ..WorkosConfig::default()
    };
    let budget = DynamoBudget::new(dynamo.clone(), env.state_table.clone(), env.key_rate_per_minute);
    let api = match WorkosClient::with_key(workos, SystemClock, budget, key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("event-processor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let processor = Arc::new(Processor::new(
        api,
        DynamoClaimStore::new(dynamo.clone(), env.events_table),
        DynamoStateStore::new(dynamo, env.state_table),
        SqsWorkQueue::new(SqsClient::new(&sdk), env.queue_url),
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
