//! Reading configuration from the environment, checked at init with clear messages.

use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error("{name} is invalid: {why}")]
    Invalid { name: &'static str, why: String },
    /// Neither of two alternative settings is set.
    #[error("{first} or {second} must be set")]
    MissingOneOf { first: &'static str, second: &'static str },
    /// Two alternative settings are both set.
    #[error("{first} and {second} are both set; set only one")]
    Conflict { first: &'static str, second: &'static str },
}

/// A source of settings: the process environment, or a map in tests.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;

    /// A set, non-blank value.
    fn value(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.value(name).ok_or(ConfigError::Missing(name))
    }

    fn parsed_or<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                name,
                why: e.to_string(),
            }),
        }
    }
}

/// The real environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Check that a URL looks like one (scheme and host), without pulling in a URL parser.
pub fn check_http_url(name: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| ConfigError::Invalid {
            name,
            why: "must start with http:// or https://".into(),
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(ConfigError::Invalid {
            name,
            why: "has no host".into(),
        });
    }
    Ok(())
}

/// A configuration value that must never be printed (an API key). `Debug` shows `[REDACTED]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        SecretString(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}
