//! Entitlement rules: which groups grant which entitlements, scoped to a tenant.
//!
//! A group *name* is chosen by the customer's IdP admin, so a name rule is only ever scoped to one
//! organization (or one directory): otherwise any customer could grant their users a feature by
//! naming a group "Platform Admins". Group *ids* are issued by WorkOS and unique, so an id rule may
//! apply to every tenant, but only when it says so explicitly (`all_tenants`).
//!
//! ```json
//! {
//!   "organizations": { "org_01…": { "by_group_name": { "Platform Admins": ["admin-console"] },
//!                                    "by_group_id":   { "directory_group_01…": ["audit-log"] } } },
//!   "directories":   { "directory_01…": { "by_group_name": { "Billing": ["billing"] } } },
//!   "all_tenants":   { "by_group_id": { "directory_group_01…": ["beta"] } }
//! }
//! ```
//! A name rule matches the group's name *as last read from the WorkOS API*, never as a webhook
//! payload carried it, and only in directories of its organization (read from WorkOS too).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::directory::UserState;

type Grants = BTreeMap<String, BTreeSet<String>>;

/// Rules for one tenant (an organization or a directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRules {
    #[serde(default)]
    pub by_group_id: Grants,
    #[serde(default)]
    pub by_group_name: Grants,
}

/// Rules that apply in every tenant: group ids only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllTenantsRules {
    #[serde(default)]
    pub by_group_id: Grants,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// organization id → rules for every directory of that organization
    #[serde(default)]
    pub organizations: BTreeMap<String, TenantRules>,
    /// directory id → rules for that directory only
    #[serde(default)]
    pub directories: BTreeMap<String, TenantRules>,
    /// group-id rules that apply whatever the tenant
    #[serde(default)]
    pub all_tenants: AllTenantsRules,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("rules are not valid JSON of the form {{\"organizations\":{{..}},\"directories\":{{..}},\"all_tenants\":{{\"by_group_id\":{{..}}}}}}: {0}")]
    Parse(String),
    #[error(
        "top-level `{0}` is no longer accepted: a group-name rule must be scoped to an organization \
         (\"organizations\": {{\"org_…\": {{\"by_group_name\": …}}}}) or a directory, and a group-id rule that \
         applies to every tenant must be written under \"all_tenants\""
    )]
    Unscoped(&'static str),
    #[error("{0}: an organization id must start with `org_`")]
    BadOrganization(String),
    #[error("{0}: a directory id must start with `directory_`")]
    BadDirectory(String),
    #[error("{0}: a group id must start with `directory_group_`")]
    BadGroupId(String),
    #[error("rules contain an empty group name or entitlement")]
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

/// Where a user lives: the rules that apply depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant<'a> {
    pub organization_id: &'a str,
    pub directory_id: &'a str,
}

impl Rules {
    pub fn parse(json: &str) -> Result<Self, RulesError> {
        let value: serde_json::Value = serde_json::from_str(json).map_err(|e| RulesError::Parse(e.to_string()))?;
        let Some(obj) = value.as_object() else {
            return Err(RulesError::Parse("not a JSON object".into()));
        };
        for old in ["by_group_id", "by_group_name"] {
            if obj.contains_key(old) {
                return Err(RulesError::Unscoped(if old == "by_group_id" {
                    "by_group_id"
                } else {
                    "by_group_name"
                }));
            }
        }
        let rules: Rules = serde_json::from_value(value).map_err(|e| RulesError::Parse(e.to_string()))?;
        rules.validate()?;
        Ok(rules)
    }

    fn validate(&self) -> Result<(), RulesError> {
        for org in self.organizations.keys() {
            if !org.starts_with("org_") {
                return Err(RulesError::BadOrganization(org.clone()));
            }
        }
        for dir in self.directories.keys() {
            if !dir.starts_with("directory_") {
                return Err(RulesError::BadDirectory(dir.clone()));
            }
        }
        let tenants = self.organizations.values().chain(self.directories.values());
        let id_maps = tenants
            .clone()
            .map(|t| &t.by_group_id)
            .chain(std::iter::once(&self.all_tenants.by_group_id));
        for map in id_maps {
            for (gid, ents) in map {
                if !gid.starts_with("directory_group_") {
                    return Err(RulesError::BadGroupId(gid.clone()));
                }
                check_entitlements(ents)?;
            }
        }
        for t in tenants {
            for (name, ents) in &t.by_group_name {
                if name.trim().is_empty() {
                    return Err(RulesError::Empty);
                }
                check_entitlements(ents)?;
            }
        }
        Ok(())
    }

    /// True when no rule mentions a group name (names then never matter).
    pub fn is_empty(&self) -> bool {
        self.organizations.is_empty() && self.directories.is_empty() && self.all_tenants.by_group_id.is_empty()
    }

    /// A short fingerprint of the rules: stored with computed entitlements, so a rules change is
    /// noticed (the next reconcile recomputes every user whose fingerprint differs).
    pub fn fingerprint(&self) -> String {
        let canonical = format!("{:?}", (&self.organizations, &self.directories, &self.all_tenants));
        let digest = Sha256::digest(canonical.as_bytes());
        hex::encode(&digest[..8])
    }

    /// The entitlements of a user of `tenant` in the given groups. Only active users have any.
    pub fn entitlements<'a>(
        &self,
        tenant: Tenant<'_>,
        state: &UserState,
        groups: impl IntoIterator<Item = GroupRef<'a>>,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if *state != UserState::Active {
            return out;
        }
        let scoped: Vec<&TenantRules> = [
            self.organizations.get(tenant.organization_id),
            self.directories.get(tenant.directory_id),
        ]
        .into_iter()
        .flatten()
        .collect();
        for g in groups {
            if let Some(e) = self.all_tenants.by_group_id.get(g.id) {
                out.extend(e.iter().cloned());
            }
            for t in &scoped {
                if let Some(e) = t.by_group_id.get(g.id) {
                    out.extend(e.iter().cloned());
                }
                if let Some(e) = t.by_group_name.get(g.name) {
                    out.extend(e.iter().cloned());
                }
            }
        }
        out
    }
}

fn check_entitlements(ents: &BTreeSet<String>) -> Result<(), RulesError> {
    for e in ents {
        if e.trim().is_empty() {
            return Err(RulesError::Empty);
        }
        if e.len() > 128 || e.chars().any(char::is_control) {
            return Err(RulesError::BadEntitlement(e.chars().take(40).collect()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const ACME: Tenant<'static> = Tenant {
        organization_id: "org_acme",
        directory_id: "directory_acme",
    };
    const EVIL: Tenant<'static> = Tenant {
        organization_id: "org_evil",
        directory_id: "directory_evil",
    };

    fn g<'a>(id: &'a str, name: &'a str) -> GroupRef<'a> {
        GroupRef { id, name }
    }

    #[test]
    fn a_name_rule_grants_only_in_its_organization() {
        let rules =
            Rules::parse(r#"{"organizations":{"org_acme":{"by_group_name":{"Platform Admins":["admin-console"]}}}}"#)
                .expect("rules");
        assert_eq!(
            rules.entitlements(ACME, &UserState::Active, [g("directory_group_a", "Platform Admins")]),
            set(&["admin-console"])
        );
        // Another customer's IdP admin names a group the same way: nothing.
        assert_eq!(
            rules.entitlements(EVIL, &UserState::Active, [g("directory_group_e", "Platform Admins")]),
            set(&[])
        );
    }

    #[test]
    fn directory_scope_org_scope_and_all_tenant_id_rules_combine() {
        let rules = Rules::parse(
            r#"{
              "organizations":{"org_acme":{"by_group_id":{"directory_group_1":["a"]}}},
              "directories":{"directory_acme":{"by_group_name":{"Billing":["billing"]}}},
              "all_tenants":{"by_group_id":{"directory_group_beta":["beta"]}}
            }"#,
        )
        .expect("rules");
        let groups = [
            g("directory_group_1", "x"),
            g("directory_group_2", "Billing"),
            g("directory_group_beta", "whatever"),
        ];
        assert_eq!(
            rules.entitlements(ACME, &UserState::Active, groups),
            set(&["a", "billing", "beta"])
        );
        assert_eq!(rules.entitlements(EVIL, &UserState::Active, groups), set(&["beta"]));
        let other_dir_same_org = Tenant {
            organization_id: "org_acme",
            directory_id: "directory_acme2",
        };
        assert_eq!(
            rules.entitlements(other_dir_same_org, &UserState::Active, groups),
            set(&["a", "beta"])
        );
    }

    #[test]
    fn names_match_exactly() {
        let rules = Rules::parse(r#"{"organizations":{"org_acme":{"by_group_name":{"Platform Admins":["x"]}}}}"#)
            .expect("rules");
        assert!(rules
            .entitlements(ACME, &UserState::Active, [g("directory_group_a", "platform admins")])
            .is_empty());
    }

    #[test]
    fn inactive_deleted_and_unknown_states_have_none() {
        let rules = Rules::parse(r#"{"all_tenants":{"by_group_id":{"directory_group_g":["x"]}}}"#).expect("rules");
        let groups = [g("directory_group_g", "G")];
        for s in [
            UserState::Inactive,
            UserState::Deleted,
            UserState::Other("suspended".into()),
        ] {
            assert!(rules.entitlements(ACME, &s, groups).is_empty(), "{s:?}");
        }
    }

    #[test]
    fn unscoped_and_invalid_rules_are_refused_with_clear_errors() {
        assert!(matches!(
            Rules::parse(r#"{"by_group_name":{"Platform Admins":["x"]}}"#),
            Err(RulesError::Unscoped("by_group_name"))
        ));
        assert!(matches!(
            Rules::parse(r#"{"by_group_id":{"directory_group_1":["x"]}}"#),
            Err(RulesError::Unscoped("by_group_id"))
        ));
        // A name rule for every tenant cannot be written.
        assert!(matches!(
            Rules::parse(r#"{"all_tenants":{"by_group_name":{"Admins":["x"]}}}"#),
            Err(RulesError::Parse(_))
        ));
        for (bad, want) in [
            (r#"{"organizations":{"acme":{}}}"#, "BadOrganization"),
            (r#"{"directories":{"acme":{}}}"#, "BadDirectory"),
            (
                r#"{"organizations":{"org_a":{"by_group_id":{"Admins":["x"]}}}}"#,
                "BadGroupId",
            ),
            (r#"{"organizations":{"org_a":{"by_group_name":{"":["x"]}}}}"#, "Empty"),
            (r#"{"organizations":{"org_a":{"by_group_name":{"A":[""]}}}}"#, "Empty"),
            (
                r#"{"organizations":{"org_a":{"by_group_name":{"A":["a\u0001"]}}}}"#,
                "BadEntitlement",
            ),
            (r#"{"organisations":{}}"#, "Parse"),
            ("[]", "Parse"),
            ("", "Parse"),
        ] {
            let got = Rules::parse(bad).expect_err(bad);
            assert!(format!("{got:?}").starts_with(want), "{bad}: {got:?}");
        }
        assert_eq!(Rules::parse("{}"), Ok(Rules::default()));
    }

    #[test]
    fn fingerprint_changes_with_the_rules() {
        let a = Rules::parse(r#"{"all_tenants":{"by_group_id":{"directory_group_g":["x"]}}}"#).expect("a");
        let b = Rules::parse(r#"{"all_tenants":{"by_group_id":{"directory_group_g":["y"]}}}"#).expect("b");
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
