//! The call counter: requests by route template and the status returned.

use std::collections::BTreeMap;

use serde::Serialize;

/// One counter row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallStat {
    /// Method and route template, e.g. `"GET /directory_users/{id}"`.
    pub route: String,
    pub status: u16,
    pub count: u64,
}

#[derive(Debug, Default)]
pub struct CallStats {
    counts: BTreeMap<(String, u16), u64>,
}

impl CallStats {
    pub fn record(&mut self, route: &str, status: u16) {
        *self.counts.entry((route.to_owned(), status)).or_default() += 1;
    }

    /// Requests to `route`, whatever they answered.
    pub fn calls(&self, route: &str) -> u64 {
        self.counts
            .iter()
            .filter(|((r, _), _)| r == route)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests to `route` that answered `status`.
    pub fn calls_with_status(&self, route: &str, status: u16) -> u64 {
        self.counts.get(&(route.to_owned(), status)).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn rows(&self) -> Vec<CallStat> {
        self.counts
            .iter()
            .map(|((route, status), count)| CallStat {
                route: route.clone(),
                status: *status,
                count: *count,
            })
            .collect()
    }

    pub fn reset(&mut self) {
        self.counts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_and_status() {
        let mut s = CallStats::default();
        s.record("GET /directory_users", 200);
        s.record("GET /directory_users", 429);
        s.record("GET /directory_users", 200);
        assert_eq!(s.calls("GET /directory_users"), 3);
        assert_eq!(s.calls_with_status("GET /directory_users", 429), 1);
        assert_eq!(s.total(), 3);
        s.reset();
        assert_eq!(s.total(), 0);
    }
}
