//! What the scheduled workers (the events poller, the scheduler) share: their configuration for
//! WorkOS, the state table and the events queue, and the clients built from it once at init.

use std::sync::Arc;

use crate::adapters::dynamo_budget::DynamoBudget;
use crate::adapters::dynamo_state::DynamoStateStore;
use crate::adapters::sqs_work::SqsWorkQueue;
use crate::adapters::workos::{WorkosClient, WorkosConfig};
use crate::clock::SystemClock;
use crate::config::{check_http_url, ConfigError, Env};
use crate::secrets::CachedSecret;

pub const ENV_STATE_TABLE: &str = "STATE_TABLE";
pub const ENV_QUEUE_URL: &str = "EVENTS_QUEUE_URL";
pub const ENV_API_BASE_URL: &str = "WORKOS_API_BASE_URL";
pub const ENV_KEY_RATE_PER_MINUTE: &str = "WORKOS_KEY_RATE_PER_MINUTE";

/// What a scheduled worker (the events poller, the scheduler) needs to reach WorkOS, the state
/// table and the events queue.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub state_table: String,
    pub queue_url: String,
    /// Where the WorkOS API key comes from (Secrets Manager, or a literal in local mode).
    pub api_key: crate::secrets::SecretSource,
    pub api_base_url: String,
    /// WorkOS requests per minute for the whole API key, shared with the processor.
    pub key_rate_per_minute: u32,
}

impl WorkerEnv {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let state_table = env.required(ENV_STATE_TABLE)?;
        let queue_url = env.required(ENV_QUEUE_URL)?;
        check_http_url(ENV_QUEUE_URL, &queue_url)?;
        let api_key = crate::secrets::api_key_source(env)?;
        let api_base_url = env
            .value(ENV_API_BASE_URL)
            .unwrap_or_else(|| "https://api.workos.com".into());
        check_http_url(ENV_API_BASE_URL, &api_base_url)?;
        let key_rate_per_minute: u32 = env.parsed_or(ENV_KEY_RATE_PER_MINUTE, 5400)?;
        if !(60..=6000).contains(&key_rate_per_minute) {
            return Err(ConfigError::Invalid {
                name: ENV_KEY_RATE_PER_MINUTE,
                why: "must be 60 to 6000 (WorkOS allows 6,000 per minute per key)".into(),
            });
        }
        Ok(WorkerEnv {
            state_table,
            queue_url,
            api_key,
            api_base_url,
            key_rate_per_minute,
        })
    }
}

/// The clients a worker uses, built once.
#[derive(Debug, Clone)]
pub struct Clients {
    pub api: WorkosClient,
    pub state: DynamoStateStore,
    pub queue: SqsWorkQueue,
}

impl WorkerEnv {
    /// Read the API key (Secrets Manager, like the processor) and build every client. The error
    /// names what failed, never the key.
    pub async fn connect(&self, sdk: &aws_config::SdkConfig) -> Result<Clients, String> {
        let key = CachedSecret::from_source(&self.api_key, sdk, SystemClock)
            .await
            .map_err(|e| format!("cannot read the WorkOS API key: {e}"))?;
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        let workos = WorkosConfig {
            base_url: self.api_base_url.clone(),
            ..WorkosConfig::default()
        };
        let budget = DynamoBudget::new(dynamo.clone(), self.state_table.clone(), self.key_rate_per_minute);
        let api = WorkosClient::with_key(workos, SystemClock, budget, Arc::new(key))
            .map_err(|e| format!("invalid configuration: {e}"))?;
        Ok(Clients {
            api,
            state: DynamoStateStore::new(dynamo, self.state_table.clone()),
            queue: SqsWorkQueue::new(aws_sdk_sqs::Client::new(sdk), self.queue_url.clone()),
        })
    }
}

/// A scheduled worker's start, shared by the events poller and the scheduler: its configuration
/// (already read and checked: `env`), the AWS SDK config, then every client (the API key read).
/// A failure is logged (what failed, never a value) and gives the exit code to stop with (2).
pub async fn boot<C>(
    name: &str,
    env: Result<(WorkerEnv, C), ConfigError>,
) -> Result<(C, Clients), std::process::ExitCode> {
    let (worker, config) = match env {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "invalid configuration");
            eprintln!("{name}: invalid configuration: {e}");
            return Err(std::process::ExitCode::from(2));
        }
    };
    let sdk = crate::aws::load_sdk_config(crate::aws::SdkBudget::WORKER).await;
    match worker.connect(&sdk).await {
        Ok(clients) => Ok((config, clients)),
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("{name}: {e}");
            Err(std::process::ExitCode::from(2))
        }
    }
}
