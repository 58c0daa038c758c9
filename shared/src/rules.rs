//! Entitlement rules: which groups grant which entitlements.
//!
//! Rules are keyed by WorkOS group id. Where a customer insists on names, a name rule matches the
//! group's name *as last read from the WorkOS API*, never as a webhook payload carried it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::directory::UserState;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// group id → entitlements
    #[serde(default)]
    pub by_group_id: BTreeMap<String, BTreeSet<String>>,
    /// group name (exact, as read) → entitlements
    #[serde(default)]
    pub by_group_name: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("rules are not valid JSON of the form {{\"by_group_id\":{{..}},\"by_group_name\":{{..}}}}: {0}")]
    Parse(String),
    #[error("rules contain an empty group key or entitlement name")]
    Empty,
    #[error("entitlement `{0}` is longer than 128 characters or has control characters")]
    BadEntitlement(String),
}

/// A group as the rules see it: its id and its name as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRef<'a> {
    pub id: &'a str,
    pub name: &'a str,
}

impl Rules {
    pub fn parse(json: &str) -> Result<Self, RulesError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| RulesError::Parse(e.to_string()))?;
        if !value.is_object() {
            return Err(RulesError::Parse("not a JSON object".into()));
        }
        let rules: Rules = serde_json::from_value(value).map_err(|e| RulesError::Parse(e.to_string()))?;
        rules.validate()?;
        Ok(rules)
    }

    fn validate(&self) -> Result<(), RulesError> {
        for (key, ents) in self.by_group_id.iter().chain(self.by_group_name.iter()) {
            if key.trim().is_empty() {
                return Err(RulesError::Empty);
            }
            for e in ents {
                if e.trim().is_empty() {
                    return Err(RulesError::Empty);
                }
                if e.len() > 128 || e.chars().any(char::is_control) {
                    return Err(RulesError::BadEntitlement(e.chars().take(40).collect()));
                }
            }
        }
        Ok(())
    }

    /// The entitlements of a user in the given groups. Only active users have any.
    pub fn entitlements<'a>(
        &self,
        state: &UserState,
        groups: impl IntoIterator<Item = GroupRef<'a>>,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if *state != UserState::Active {
            return out;
        }
        for g in groups {
            if let Some(e) = self.by_group_id.get(g.id) {
                out.extend(e.iter().cloned());
            }
            if let Some(e) = self.by_group_name.get(g.name) {
                out.extend(e.iter().cloned());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn id_and_name_rules_combine() {
        let rules = Rules::parse(
            r#"{"by_group_id":{"directory_group_1":["admin-console"]},"by_group_name":{"Platform Admins":["audit-log","admin-console"]}}"#,
        )
        .expect("rules");
        let g = |id, name| GroupRef { id, name };
        assert_eq!(
            rules.entitlements(&UserState::Active, [g("directory_group_1", "Enterprise Admins")]),
            set(&["admin-console"])
        );
        assert_eq!(
            rules.entitlements(&UserState::Active, [g("directory_group_1", "Platform Admins")]),
            set(&["admin-console", "audit-log"])
        );
        assert_eq!(
            rules.entitlements(&UserState::Active, [g("directory_group_2", "platform admins")]),
            set(&[])
        );
    }

    #[test]
    fn inactive_deleted_and_unknown_states_have_none() {
        let rules = Rules::parse(r#"{"by_group_id":{"g":["x"]}}"#).expect("rules");
        let groups = [GroupRef { id: "g", name: "G" }];
        for s in [
            UserState::Inactive,
            UserState::Deleted,
            UserState::Other("suspended".into()),
        ] {
            assert!(rules.entitlements(&s, groups).is_empty(), "{s:?}");
        }
    }

    #[test]
    fn invalid_rules_are_refused() {
        for bad in [
            "",
            "[]",
            r#"{"by_group_id":{"g":"x"}}"#,
            r#"{"by_group_id":{"":["x"]}}"#,
            r#"{"by_group_id":{"g":[""]}}"#,
            r#"{"by_group_ids":{}}"#,
            r#"{"by_group_name":{"g":["a\u0001"]}}"#,
        ] {
            assert!(Rules::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Rules::parse("{}"), Ok(Rules::default()));
    }
}
