//! Fault injection: "the next N requests to <route> answer <status>", and a global outage switch.

use serde::{Deserialize, Serialize};

/// Matches every API route in [`Faults::inject`].
pub const ANY_ROUTE: &str = "*";

/// What an injected fault answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// 429, body `"Ratelimited"`, header `Retry-After: <retry_after_secs>`.
    RateLimited { retry_after_secs: u64 },
    /// Any status (500, 503, …) with body `{"message": message}`.
    Error { status: u16, message: String },
}

impl Fault {
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Fault::RateLimited { retry_after_secs }
    }

    /// An error status with a stock message.
    pub fn status(status: u16) -> Self {
        let message = match status {
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Injected fault",
        };
        Fault::Error {
            status,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    route: String,
    remaining: u32,
    fault: Fault,
}

/// The armed faults, consumed in the order they were injected.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Vec<Rule>,
    outage: bool,
}

impl Faults {
    /// Arm `fault` for the next `times` requests to `route` (a template such as
    /// `"GET /directory_users/{id}"`, or [`ANY_ROUTE`]).
    pub fn inject(&mut self, route: &str, times: u32, fault: Fault) {
        if times > 0 {
            self.rules.push(Rule {
                route: route.to_owned(),
                remaining: times,
                fault,
            });
        }
    }

    pub fn set_outage(&mut self, on: bool) {
        self.outage = on;
    }

    pub fn outage(&self) -> bool {
        self.outage
    }

    /// Drop every armed fault and end any outage.
    pub fn clear(&mut self) {
        self.rules.clear();
        self.outage = false;
    }

    /// Faults still armed, per route: `(route, remaining)`.
    pub fn pending(&self) -> Vec<(String, u32)> {
        self.rules.iter().map(|r| (r.route.clone(), r.remaining)).collect()
    }

    /// Consume one shot of the first rule matching `route`, if any.
    pub fn take(&mut self, route: &str) -> Option<Fault> {
        let i = self
            .rules
            .iter()
            .position(|r| r.route == route || r.route == ANY_ROUTE)?;
        let rule = &mut self.rules[i];
        rule.remaining = rule.remaining.saturating_sub(1);
        let fault = rule.fault.clone();
        if rule.remaining == 0 {
            self.rules.remove(i);
        }
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_requests_then_normal() {
        let mut f = Faults::default();
        f.inject("GET /directory_users", 2, Fault::status(503));
        assert_eq!(f.take("GET /directory_groups"), None);
        assert_eq!(f.take("GET /directory_users"), Some(Fault::status(503)));
        assert_eq!(f.take("GET /directory_users"), Some(Fault::status(503)));
        assert_eq!(f.take("GET /directory_users"), None);
        f.inject(ANY_ROUTE, 1, Fault::rate_limited(3));
        assert_eq!(f.take("GET /events"), Some(Fault::rate_limited(3)));
        assert!(f.pending().is_empty());
    }
}
