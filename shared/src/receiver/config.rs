//! Receiver configuration, read and checked once at init.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{check_http_url, ConfigError, Env};
use crate::secrets::{webhook_secret_source, SecretSource};
use crate::signature::{SecretError, Verifier};

/// The webhook secret list itself (local mode).
pub const ENV_SECRET: &str = crate::secrets::ENV_WEBHOOK_SECRET;
/// The Secrets Manager secret (ARN or name) holding the webhook secret list (deployed).
pub const ENV_SECRET_ARN: &str = crate::secrets::ENV_WEBHOOK_SECRET_ARN;
pub const ENV_QUEUE_URL: &str = "EVENTS_QUEUE_URL";
pub const ENV_TOLERANCE: &str = "WORKOS_SIGNATURE_TOLERANCE_SECS";
/// Shortest time between two re-reads of the secret from Secrets Manager on a signature mismatch.
pub const ENV_SECRET_REFRESH: &str = "WORKOS_WEBHOOK_SECRET_REFRESH_SECS";
pub const ENV_ALLOWED_IPS: &str = "WORKOS_ALLOWED_IPS";
pub const ENV_PATH_TOKEN: &str = "WEBHOOK_PATH_TOKEN";
pub const ENV_LISTEN_ADDR: &str = "LISTEN_ADDR";

/// Shortest accepted path token: it is a second secret, not a label.
pub const MIN_PATH_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Where the webhook secret list comes from; read at init with `CachedSecret`.
    pub secret: SecretSource,
    /// Accepted clock difference between a signature's `t` and now.
    pub tolerance: Duration,
    /// A mismatch re-reads a Secrets Manager secret only if the last read began this long ago.
    pub secret_refresh: Duration,
    pub queue_url: String,
    pub allowed_ips: Option<Vec<IpAddr>>,
    pub path_token: Option<String>,
    /// Serve plain HTTP here instead of the Lambda runtime.
    pub listen_addr: Option<SocketAddr>,
}

impl ReceiverConfig {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let secret = webhook_secret_source(env)?;
        let tolerance_secs: u64 = env.parsed_or(ENV_TOLERANCE, 180)?;
        if !(1..=3600).contains(&tolerance_secs) {
            return Err(ConfigError::Invalid {
                name: ENV_TOLERANCE,
                why: "must be between 1 and 3600 seconds".into(),
            });
        }
        let tolerance = Duration::from_secs(tolerance_secs);
        let refresh_secs: u64 = env.parsed_or(ENV_SECRET_REFRESH, 60)?;
        if !(1..=3600).contains(&refresh_secs) {
            return Err(ConfigError::Invalid {
                name: ENV_SECRET_REFRESH,
                why: "must be between 1 and 3600 seconds".into(),
            });
        }
        // A literal list is checked now; one from Secrets Manager once it has been read.
        if let SecretSource::Literal { value, .. } = &secret {
            verifier_from_list(&secret, value.expose(), tolerance)?;
        }
        let queue_url = env.required(ENV_QUEUE_URL)?;
        check_http_url(ENV_QUEUE_URL, &queue_url)?;
        let allowed_ips = match env.value(ENV_ALLOWED_IPS) {
            None => None,
            Some(list) => {
                let ips = list
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<IpAddr>().map_err(|_| ConfigError::Invalid {
                            name: ENV_ALLOWED_IPS,
                            why: format!("`{s}` is not an IP address"),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(ips)
            }
        };
        let path_token = env.value(ENV_PATH_TOKEN);
        if let Some(t) = &path_token {
            if t.len() < MIN_PATH_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(ConfigError::Invalid {
                    name: ENV_PATH_TOKEN,
                    why: format!("must be at least {MIN_PATH_TOKEN_LEN} characters of [A-Za-z0-9_-]"),
                });
            }
        }
        let listen_addr = match env.value(ENV_LISTEN_ADDR) {
            None => None,
            Some(a) => Some(a.trim().parse().map_err(|_| ConfigError::Invalid {
                name: ENV_LISTEN_ADDR,
                why: "must be host:port, e.g. 127.0.0.1:3000".into(),
            })?),
        };
        Ok(ReceiverConfig {
            secret,
            tolerance,
            secret_refresh: Duration::from_secs(refresh_secs),
            queue_url,
            allowed_ips,
            path_token,
            listen_addr,
        })
    }
}

/// A verifier for a comma-separated secret list read from `source`.
pub fn verifier_from_list(source: &SecretSource, list: &str, tolerance: Duration) -> Result<Verifier, ConfigError> {
    Verifier::from_list(list, tolerance).map_err(|SecretError::Empty| ConfigError::Invalid {
        name: source.var(),
        why: "holds no secret".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const Q: &str = "http://127.0.0.1:4566/123456789012/events";

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:dsync/workos-webhook-secret-AbCdEf";

    #[test]
    fn minimal_config() {
        let c = ReceiverConfig::from_env(&env(&[(ENV_SECRET, "a,b"), (ENV_QUEUE_URL, Q)])).expect("config");
        assert_eq!(
            c.secret,
            SecretSource::Literal {
                var: ENV_SECRET,
                value: crate::config::SecretString::new("a,b")
            }
        );
        assert_eq!(c.tolerance, Duration::from_secs(180));
        assert_eq!(c.secret_refresh, Duration::from_secs(60));
        assert!(c.allowed_ips.is_none() && c.path_token.is_none() && c.listen_addr.is_none());
    }

    #[test]
    fn the_secret_may_come_from_secrets_manager() {
        let c = ReceiverConfig::from_env(&env(&[(ENV_SECRET_ARN, ARN), (ENV_QUEUE_URL, Q)])).expect("config");
        assert_eq!(
            c.secret,
            SecretSource::SecretsManager {
                var: ENV_SECRET_ARN,
                secret_id: ARN.into()
            }
        );
        let both = env(&[(ENV_SECRET_ARN, ARN), (ENV_SECRET, "s"), (ENV_QUEUE_URL, Q)]);
        assert_eq!(
            ReceiverConfig::from_env(&both).err(),
            Some(ConfigError::Conflict {
                first: ENV_SECRET_ARN,
                second: ENV_SECRET
            })
        );
    }

    #[test]
    fn verifier_from_a_read_list() {
        let source = SecretSource::SecretsManager {
            var: ENV_SECRET_ARN,
            secret_id: ARN.into(),
        };
        let v = verifier_from_list(&source, "old, new", Duration::from_secs(60)).expect("verifier");
        assert_eq!((v.secret_count(), v.tolerance()), (2, Duration::from_secs(60)));
        match verifier_from_list(&source, " , ", Duration::from_secs(60)) {
            Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, ENV_SECRET_ARN),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_and_invalid_settings_fail_with_their_name() {
        let e = ReceiverConfig::from_env(&env(&[(ENV_QUEUE_URL, Q)])).err();
        assert_eq!(
            e,
            Some(ConfigError::MissingOneOf {
                first: ENV_SECRET_ARN,
                second: ENV_SECRET
            })
        );
        let e = ReceiverConfig::from_env(&env(&[(ENV_SECRET, "s")])).err();
        assert_eq!(e, Some(ConfigError::Missing(ENV_QUEUE_URL)));
        for (k, v) in [
            (ENV_SECRET, " , "),
            (ENV_QUEUE_URL, "sqs/events"),
            (ENV_TOLERANCE, "0"),
            (ENV_TOLERANCE, "ten"),
            (ENV_SECRET_REFRESH, "0"),
            (ENV_SECRET_REFRESH, "soon"),
            (ENV_ALLOWED_IPS, "1.2.3.4, nope"),
            (ENV_PATH_TOKEN, "short"),
            (ENV_LISTEN_ADDR, "localhost"),
        ] {
            let mut m = env(&[(ENV_SECRET, "s"), (ENV_QUEUE_URL, Q)]);
            m.insert(k.to_string(), v.to_string());
            match ReceiverConfig::from_env(&m) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, k),
                other => panic!("{k}={v}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let m = env(&[(ENV_SECRET, "whsec_topsecret"), (ENV_QUEUE_URL, "nope")]);
        let e = ReceiverConfig::from_env(&m)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.contains("topsecret"));
        let c = ReceiverConfig::from_env(&env(&[(ENV_SECRET, "whsec_topsecret"), (ENV_QUEUE_URL, Q)])).expect("c");
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
