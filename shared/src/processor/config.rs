//! Processor configuration, read and checked once at init.

use std::time::Duration;

use crate::config::{check_http_url, ConfigError, Env};
use crate::rules::Rules;

pub const ENV_EVENTS_TABLE: &str = "EVENTS_TABLE";
pub const ENV_STATE_TABLE: &str = "STATE_TABLE";
pub const ENV_API_KEY: &str = "WORKOS_API_KEY";
pub const ENV_API_BASE_URL: &str = "WORKOS_API_BASE_URL";
pub const ENV_RULES: &str = "ENTITLEMENT_RULES";
pub const ENV_CLAIM_TTL_DAYS: &str = "CLAIM_TTL_DAYS";
pub const ENV_RECONCILE_THRESHOLD: &str = "RECONCILE_THRESHOLD";
pub const ENV_SKIP_MARGIN_MS: &str = "SKIP_MARGIN_MS";
pub const ENV_STORE_CONCURRENCY: &str = "STORE_CONCURRENCY";

/// How the processor behaves (independent of where its ports lead).
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub rules: Rules,
    /// How long a claim record is kept: at least the Events API's replay window.
    pub claim_ttl: Duration,
    /// A read must have begun this long after an event's `created_at` to count as reflecting it
    /// (covers clock skew between WorkOS and us, and WorkOS's own read lag).
    pub skip_margin: Duration,
    /// This many per-object events for one directory in a batch become one directory-wide reconcile.
    pub reconcile_threshold: usize,
    /// Records and actions of a batch run this many at a time.
    pub concurrency: usize,
    /// DynamoDB writes and recomputes of independent items run this many at a time.
    pub store_concurrency: usize,
    /// Kept free before the invocation deadline for releasing claims and answering.
    pub reserve: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            rules: Rules::default(),
            claim_ttl: Duration::from_secs(30 * 86_400),
            skip_margin: Duration::from_secs(5),
            reconcile_threshold: 5,
            concurrency: 4,
            store_concurrency: 8,
            reserve: super::DEFAULT_RESERVE,
        }
    }
}

/// Everything the processor's `main` needs.
#[derive(Debug, Clone)]
pub struct ProcessorEnv {
    pub events_table: String,
    pub state_table: String,
    pub api_key: crate::config::SecretString,
    pub api_base_url: String,
    pub config: ProcessorConfig,
}

impl ProcessorEnv {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let events_table = env.required(ENV_EVENTS_TABLE)?;
        let state_table = env.required(ENV_STATE_TABLE)?;
        let api_key = crate::config::SecretString::new(env.required(ENV_API_KEY)?);
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
        let store_concurrency: usize = env.parsed_or(ENV_STORE_CONCURRENCY, 8)?;
        if !(1..=64).contains(&store_concurrency) {
            return Err(ConfigError::Invalid {
                name: ENV_STORE_CONCURRENCY,
                why: "must be 1 to 64".into(),
            });
        }
        Ok(ProcessorEnv {
            events_table,
            state_table,
            api_key,
            api_base_url,
            config: ProcessorConfig {
                rules,
                claim_ttl: Duration::from_secs(ttl_days * 86_400),
                skip_margin: Duration::from_millis(skip_margin_ms),
                reconcile_threshold,
                store_concurrency,
                ..ProcessorConfig::default()
            },
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
            (ENV_API_KEY, "sk_test_secretkey"),
        ])
    }

    #[test]
    fn defaults() {
        let e = ProcessorEnv::from_env(&base()).expect("config");
        assert_eq!(e.api_base_url, "https://api.workos.com");
        assert_eq!(e.config.claim_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(e.config.reconcile_threshold, 5);
        assert!(
            !format!("{e:?}").contains("secretkey"),
            "the API key must not show in Debug"
        );
    }

    #[test]
    fn each_required_setting_is_named_when_missing() {
        for k in [ENV_EVENTS_TABLE, ENV_STATE_TABLE, ENV_API_KEY] {
            let mut m = base();
            m.remove(k);
            assert_eq!(ProcessorEnv::from_env(&m).err(), Some(ConfigError::Missing(k)));
        }
    }

    #[test]
    fn invalid_settings_are_refused_at_init() {
        for (k, v) in [
            (ENV_RULES, "{\"by_group_id\":{\"g\":\"x\"}}"),
            (ENV_RULES, "not json"),
            (ENV_API_BASE_URL, "api.workos.com"),
            (ENV_CLAIM_TTL_DAYS, "0"),
            (ENV_CLAIM_TTL_DAYS, "many"),
            (ENV_RECONCILE_THRESHOLD, "1"),
            (ENV_SKIP_MARGIN_MS, "-1"),
            (ENV_STORE_CONCURRENCY, "0"),
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
