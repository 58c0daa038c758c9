//! Processor configuration, read and checked once at init.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{check_http_url, ConfigError, Env};
use crate::engine::EngineConfig;
use crate::rules::Rules;

pub const ENV_EVENTS_TABLE: &str = "EVENTS_TABLE";
pub const ENV_STATE_TABLE: &str = "STATE_TABLE";
pub const ENV_QUEUE_URL: &str = "EVENTS_QUEUE_URL";
pub const ENV_API_BASE_URL: &str = "WORKOS_API_BASE_URL";
pub const ENV_RULES: &str = "ENTITLEMENT_RULES";
pub const ENV_CLAIM_TTL_DAYS: &str = "CLAIM_TTL_DAYS";
pub const ENV_RECONCILE_THRESHOLD: &str = "RECONCILE_THRESHOLD";
pub const ENV_SKIP_MARGIN_MS: &str = "SKIP_MARGIN_MS";
pub const ENV_CHUNK_SECONDS: &str = "CHUNK_SECONDS";
pub const ENV_KEY_RATE_PER_MINUTE: &str = "WORKOS_KEY_RATE_PER_MINUTE";
pub const ENV_CONCURRENCY: &str = "DIRECTORY_CONCURRENCY";

/// How the processor behaves (independent of where its ports lead).
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub engine: EngineConfig,
    /// How long a claim record is kept: at least the Events API's replay window.
    pub claim_ttl: Duration,
    /// Directories (and claims) of a batch worked at once.
    pub concurrency: usize,
    /// Kept free before the invocation deadline for releasing claims and answering.
    pub reserve: Duration,
    /// A deferred event comes back after this, doubling with each receive up to `defer_max`.
    pub defer_min: Duration,
    pub defer_max: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            engine: EngineConfig::default(),
            claim_ttl: Duration::from_secs(30 * 86_400),
            concurrency: 8,
            reserve: Duration::from_secs(3),
            defer_min: Duration::from_secs(5),
            defer_max: Duration::from_secs(900),
        }
    }
}

impl ProcessorConfig {
    /// These rules, the defaults otherwise.
    pub fn with_rules(rules: Rules) -> Self {
        let mut c = ProcessorConfig::default();
        c.engine.rules = Arc::new(rules);
        c
    }
}

/// Everything the processor's `main` needs.
#[derive(Debug, Clone)]
pub struct ProcessorEnv {
    pub events_table: String,
    pub state_table: String,
    pub queue_url: String,
    /// Where the WorkOS API key comes from (Secrets Manager, or a literal in local mode).
    pub api_key: crate::secrets::SecretSource,
    pub api_base_url: String,
    /// WorkOS requests per minute for the whole API key, shared by every invocation.
    pub key_rate_per_minute: u32,
    pub config: ProcessorConfig,
}

impl ProcessorEnv {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let events_table = env.required(ENV_EVENTS_TABLE)?;
        let state_table = env.required(ENV_STATE_TABLE)?;
        let queue_url = env.required(ENV_QUEUE_URL)?;
        check_http_url(ENV_QUEUE_URL, &queue_url)?;
        let api_key = crate::secrets::api_key_source(env)?;
        let api_base_url = env
            .value(ENV_API_BASE_URL)
            .unwrap_or_else(|| "https://api.workos.com".into());
        check_http_url(ENV_API_BASE_URL, &api_base_url)?;
        let rules = match env.value(ENV_RULES) {
            None => Rules::default(),
            Some(json) => Rules::parse(&json).map_err(|e| ConfigError::Invalid {
                name: ENV_RULES,
                why: e.to_string(),
            })?,
        };
        let ttl_days: u64 = env.parsed_or(ENV_CLAIM_TTL_DAYS, 30)?;
        if !(1..=365).contains(&ttl_days) {
            return Err(ConfigError::Invalid {
                name: ENV_CLAIM_TTL_DAYS,
                why: "must be 1 to 365 days".into(),
            });
        }
        let reconcile_threshold: usize = env.parsed_or(ENV_RECONCILE_THRESHOLD, 5)?;
        if reconcile_threshold < 2 {
            return Err(ConfigError::Invalid {
                name: ENV_RECONCILE_THRESHOLD,
                why: "must be at least 2".into(),
            });
        }
        let skip_margin_ms: u64 = env.parsed_or(ENV_SKIP_MARGIN_MS, 5000)?;
        let chunk_secs: u64 = env.parsed_or(ENV_CHUNK_SECONDS, 25)?;
        if !(5..=450).contains(&chunk_secs) {
            return Err(ConfigError::Invalid {
                name: ENV_CHUNK_SECONDS,
                why: "must be 5 to 450 seconds (at most half the function timeout)".into(),
            });
        }
        let key_rate_per_minute: u32 = env.parsed_or(ENV_KEY_RATE_PER_MINUTE, 5400)?;
        if !(60..=6000).contains(&key_rate_per_minute) {
            return Err(ConfigError::Invalid {
                name: ENV_KEY_RATE_PER_MINUTE,
                why: "must be 60 to 6000 (WorkOS allows 6,000 per minute per key)".into(),
            });
        }
        let concurrency: usize = env.parsed_or(ENV_CONCURRENCY, 8)?;
        if !(1..=64).contains(&concurrency) {
            return Err(ConfigError::Invalid {
                name: ENV_CONCURRENCY,
                why: "must be 1 to 64".into(),
            });
        }
        let mut config = ProcessorConfig::with_rules(rules);
        config.claim_ttl = Duration::from_secs(ttl_days * 86_400);
        config.concurrency = concurrency;
        config.engine.reconcile_threshold = reconcile_threshold;
        config.engine.skip_margin = Duration::from_millis(skip_margin_ms);
        config.engine.chunk = Duration::from_secs(chunk_secs);
        Ok(ProcessorEnv {
            events_table,
            state_table,
            queue_url,
            api_key,
            api_base_url,
            key_rate_per_minute,
            config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn base() -> HashMap<String, String> {
        env(&[
            (ENV_EVENTS_TABLE, "events"),
            (ENV_STATE_TABLE, "state"),
            (ENV_QUEUE_URL, "http://127.0.0.1:4566/123456789012/q"),
            (crate::secrets::ENV_API_KEY, "sk_test_secretkey"),
        ])
    }

    #[test]
    fn defaults() {
        let e = ProcessorEnv::from_env(&base()).expect("config");
        assert_eq!(e.api_base_url, "https://api.workos.com");
        assert_eq!(e.config.claim_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(e.config.engine.reconcile_threshold, 5);
        assert_eq!(e.config.engine.chunk, Duration::from_secs(25));
        assert_eq!(e.key_rate_per_minute, 5400);
        assert!(
            !format!("{e:?}").contains("secretkey"),
            "the API key must not show in Debug"
        );
    }

    #[test]
    fn each_required_setting_is_named_when_missing() {
        for k in [ENV_EVENTS_TABLE, ENV_STATE_TABLE, ENV_QUEUE_URL] {
            let mut m = base();
            m.remove(k);
            assert_eq!(ProcessorEnv::from_env(&m).err(), Some(ConfigError::Missing(k)));
        }
        let mut m = base();
        m.remove(crate::secrets::ENV_API_KEY);
        assert!(
            ProcessorEnv::from_env(&m).is_err(),
            "the API key (or its secret ARN) is required"
        );
    }

    #[test]
    fn invalid_settings_are_refused_at_init() {
        for (k, v) in [
            (ENV_RULES, "{\"by_group_id\":{\"g\":\"x\"}}"),
            (ENV_RULES, "{\"by_group_name\":{\"Admins\":[\"x\"]}}"),
            (ENV_RULES, "not json"),
            (ENV_API_BASE_URL, "api.workos.com"),
            (ENV_QUEUE_URL, "queue"),
            (ENV_CLAIM_TTL_DAYS, "0"),
            (ENV_CLAIM_TTL_DAYS, "many"),
            (ENV_RECONCILE_THRESHOLD, "1"),
            (ENV_SKIP_MARGIN_MS, "-1"),
            (ENV_CHUNK_SECONDS, "1"),
            (ENV_CHUNK_SECONDS, "600"),
            (ENV_KEY_RATE_PER_MINUTE, "7000"),
            (ENV_CONCURRENCY, "0"),
        ] {
            let mut m = base();
            m.insert(k.to_string(), v.to_string());
            match ProcessorEnv::from_env(&m) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, k, "{k}={v}"),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }
}
