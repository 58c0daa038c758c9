//! The directory picture as stored: one record per user and per group, the rules that change it,
//! and the derivation of a user's entitlements. Pure: the engine reads and writes records, this
//! module decides what a read does to them.
//!
//! Three orders, none of them a clock of ours:
//! - **Content** (a user's state and hashes, a group's name) is ordered by WorkOS's own
//!   `updated_at`: an older version never replaces a newer one, whatever the arrival order.
//! - **Existence and membership** have no WorkOS version: they are ordered by [`Obs`], a
//!   per-directory observation number the lease holder allocates (lease epoch, then a counter),
//!   so a sweep's "not listed as of the listing's start" never undoes a later observation.
//! - **Derivation** is checked by integer versions we allocate: a user's `rv` moves when its
//!   rule-relevant content (existence, state) changes, a group's `nv` when its name or existence
//!   changes. A membership counts towards a grant only if it was observed together with the
//!   user's current `rv` and the group's current `nv` (a *witness*): a grant is always something
//!   WorkOS held at one moment, never a mix of a name from one read and a member from another.
//!   A user record names the `nv` of each group it was derived with; the gate treats a record
//!   derived with an older name as stale.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::clock::EpochMillis;
use crate::directory::{DirGroup, DirUser, UserState};
use crate::floors::{Entry, Floors, Order, FLOOR_TTL};
use crate::rules::{GroupRef, Rules, Tenant};

/// The order of observations within one directory: the lease epoch in the high 32 bits, a
/// counter of the holder's own in the low. A later holder's observations always sort later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Obs(pub u64);

impl Obs {
    pub fn new(epoch: u64, n: u32) -> Obs {
        Obs((epoch << 32) | u64::from(n))
    }
}

/// A mark: `ver` counts the events accepted about an object (markers add one, atomically);
/// `applied` is the `ver` a read had seen before its first WorkOS call, written once that read's
/// facts are applied and meet every floor. The object is *dirty* while `ver > applied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub ver: u64,
    pub applied: u64,
}

impl Mark {
    pub fn dirty(&self) -> bool {
        self.ver > self.applied
    }
}

/// One (user, group) observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub present: bool,
    pub obs: Obs,
    /// The user's `rv` when this was observed (0: not known).
    pub rv: u32,
    /// The group's `nv` when this was observed (0: not known).
    pub nv: u32,
}

/// A user of one directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    pub user_id: String,
    /// `None`: never read (a record made by a mark only); `Some(false)`: deleted in WorkOS.
    pub exists: Option<bool>,
    pub exists_obs: Obs,
    /// WorkOS `updated_at` of the content below.
    pub version: Option<EpochMillis>,
    pub state: Option<UserState>,
    pub email_hash: Option<String>,
    pub idp_hash: Option<String>,
    /// Moves when existence or state changes.
    pub rv: u32,
    pub groups: BTreeMap<String, Membership>,
    pub floors: Floors,
    /// Derived from the facts above.
    pub entitlements: BTreeSet<String>,
    /// The `nv` of each group the user is a member of, as derived.
    pub derived_with: BTreeMap<String, u32>,
    /// Fingerprint of the rules the entitlements were derived with.
    pub rules_fp: String,
    pub mark: Mark,
    /// Floors added by markers and not folded yet (their stored strings).
    pub inbox: BTreeSet<String>,
}

/// A group of one directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRecord {
    pub group_id: String,
    pub exists: Option<bool>,
    pub exists_obs: Obs,
    pub version: Option<EpochMillis>,
    pub name: Option<String>,
    /// Moves when the name or existence changes.
    pub nv: u32,
    pub floors: Floors,
    pub mark: Mark,
    pub inbox: BTreeSet<String>,
}

/// Fold a record's inbox into its floors (expired ones dropped). Returns the inbox strings folded
/// (they leave the stored inbox with the next write).
fn fold(floors: &mut Floors, inbox: &BTreeSet<String>, now: EpochMillis) -> Vec<String> {
    let entries: Vec<Entry> = inbox.iter().filter_map(|s| Entry::decode(s)).collect();
    floors.fold(entries.iter());
    floors.expire(now, FLOOR_TTL);
    inbox.iter().cloned().collect()
}

/// Is `new` a newer version than `old`? (A read without `updated_at` never replaces one with it.)
fn newer(new: Option<EpochMillis>, old: Option<EpochMillis>) -> bool {
    match (new, old) {
        (Some(n), Some(o)) => n > o,
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

impl UserRecord {
    pub fn new(user_id: impl Into<String>) -> Self {
        UserRecord {
            user_id: user_id.into(),
            ..Default::default()
        }
    }

    pub fn fold_inbox(&mut self, now: EpochMillis) -> Vec<String> {
        fold(&mut self.floors, &self.inbox, now)
    }

    pub fn is_member(&self, gid: &str) -> bool {
        self.groups.get(gid).is_some_and(|m| m.present)
    }

    /// Group ids the user is a member of, as stored.
    pub fn member_of(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().filter(|(_, m)| m.present).map(|(g, _)| g.as_str())
    }

    pub fn is_live(&self) -> bool {
        self.exists == Some(true)
    }

    fn relevant(&self) -> (Option<bool>, Option<UserState>) {
        (self.exists, self.state.clone())
    }

    /// Apply the user as read (`None`: WorkOS answered 404, or a complete listing did not list
    /// it) by an observation `obs`. Returns whether anything stored changed. The caller has
    /// checked the floors.
    pub fn observe(&mut self, u: Option<&DirUser>, obs: Obs) -> bool {
        let before = self.clone();
        let was = self.relevant();
        if obs >= self.exists_obs {
            self.exists = Some(u.is_some());
            self.exists_obs = obs;
            if u.is_none() {
                for m in self.groups.values_mut() {
                    if m.obs <= obs {
                        m.present = false;
                        m.obs = obs;
                    }
                }
            }
        }
        if let Some(u) = u {
            if newer(u.updated_at, self.version) {
                self.version = u.updated_at;
                self.state = Some(u.state.clone());
                self.email_hash.clone_from(&u.email_hash);
                self.idp_hash.clone_from(&u.idp_hash);
            }
        }
        if self.relevant() != was {
            self.rv += 1;
        }
        *self != before
    }

    /// The `rv` a membership observed together with user content at `version` carries: the
    /// current one if that content is what is stored, else unknown (0).
    pub fn rv_for(&self, version: Option<EpochMillis>) -> u32 {
        if self.is_live() && version == self.version {
            self.rv
        } else {
            0
        }
    }

    /// Apply one pair observation. Refused (false) when a later observation of the pair is stored.
    pub fn observe_member(&mut self, gid: &str, present: bool, obs: Obs, rv: u32, nv: u32) -> bool {
        let m = Membership { present, obs, rv, nv };
        match self.groups.get_mut(gid) {
            Some(old) if old.obs > obs => false,
            Some(old) => {
                let changed = *old != m;
                *old = m;
                changed
            }
            None => {
                self.groups.insert(gid.to_string(), m);
                true
            }
        }
    }

    /// Drop absences no floor or fence needs any more (bounded record size): an absence older
    /// than `horizon` (an observation from a lease epoch long gone).
    pub fn prune(&mut self, horizon: Obs) {
        self.groups.retain(|_, m| m.present || m.obs >= horizon);
    }

    /// Recompute the entitlements from the stored facts. A membership counts only with a witness
    /// (observed with the user's current `rv` and the group's current `nv`). Returns whether the
    /// entitlements changed.
    pub fn derive<'g>(&mut self, groups: &dyn Fn(&str) -> Option<&'g GroupRecord>, ctx: &Derive<'_>) -> bool {
        let state = if self.is_live() {
            self.state.clone().unwrap_or(UserState::Other("unknown".into()))
        } else {
            UserState::Deleted
        };
        let mut witnessed: Vec<(String, String)> = Vec::new();
        let mut with = BTreeMap::new();
        for (gid, m) in self.groups.iter().filter(|(_, m)| m.present) {
            let g = groups(gid);
            with.insert(gid.clone(), g.map_or(0, |g| g.nv));
            if let Some(g) = g {
                if let Some(name) = g.live_name() {
                    if m.rv == self.rv && m.rv != 0 && m.nv == g.nv && g.nv != 0 {
                        witnessed.push((gid.clone(), name.to_string()));
                    }
                }
            }
        }
        let ents = ctx.rules.entitlements(
            ctx.tenant,
            &state,
            witnessed.iter().map(|(id, name)| GroupRef { id, name }),
        );
        let changed = ents != self.entitlements;
        self.entitlements = ents;
        self.derived_with = with;
        self.rules_fp = ctx.rules_fp.to_string();
        changed
    }

    /// Do the stored facts meet every floor? (`group_gone`: a group's deletion floor.)
    pub fn meets_floors(&self, group_gone: &dyn Fn(&str) -> Option<Order>) -> bool {
        let member = |g: &str| Some(self.is_member(g));
        let seen = crate::floors::Seen {
            version: if self.is_live() {
                Some(self.version.unwrap_or(EpochMillis(0)))
            } else {
                None
            },
            member: &member,
        };
        self.exists.is_some() && self.floors.admit(&seen, group_gone)
    }
}

/// What a derivation needs besides the user's own facts.
pub struct Derive<'a> {
    pub rules: &'a Rules,
    pub rules_fp: &'a str,
    pub tenant: Tenant<'a>,
}

impl GroupRecord {
    pub fn new(group_id: impl Into<String>) -> Self {
        GroupRecord {
            group_id: group_id.into(),
            ..Default::default()
        }
    }

    pub fn fold_inbox(&mut self, now: EpochMillis) -> Vec<String> {
        fold(&mut self.floors, &self.inbox, now)
    }

    pub fn is_live(&self) -> bool {
        self.exists == Some(true)
    }

    /// Its name as the rules see it: only a live group has one.
    pub fn live_name(&self) -> Option<&str> {
        if self.is_live() {
            self.name.as_deref()
        } else {
            None
        }
    }

    /// Apply the group as read (`None`: gone) by observation `obs`. Returns `(changed, renamed)`:
    /// renamed when the name or existence changed (`nv` moved). The caller has checked floors.
    pub fn observe(&mut self, g: Option<&DirGroup>, obs: Obs) -> (bool, bool) {
        let before = self.clone();
        let was = (self.exists, self.name.clone());
        if obs >= self.exists_obs {
            self.exists = Some(g.is_some());
            self.exists_obs = obs;
        }
        if let Some(g) = g {
            if newer(g.updated_at, self.version) {
                self.version = g.updated_at;
                self.name = Some(g.name.clone());
            }
        }
        let renamed = (self.exists, self.name.clone()) != was;
        if renamed {
            self.nv += 1;
        }
        (*self != before, renamed)
    }

    /// The deletion floor, if any (for membership assertions made moot by it).
    pub fn gone_floor(&self) -> Option<Order> {
        self.floors.gone.clone()
    }

    pub fn meets_floors(&self) -> bool {
        let none = |_: &str| None;
        let seen = crate::floors::Seen {
            version: if self.is_live() {
                Some(self.version.unwrap_or(EpochMillis(0)))
            } else {
                None
            },
            member: &none,
        };
        self.exists.is_some() && self.floors.admit(&seen, &|_| None)
    }
}

/// A 64-bit fingerprint of an id, keyed by a per-run random salt: what a reconcile remembers of
/// each listed object until its sweep. A collision between a listed id and a vanished one keeps
/// a stale fact for one run (the next uses another salt): about `removed × listed / 2^64` a run.
pub fn fingerprint(salt: &[u8], id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update((salt.len() as u64).to_be_bytes());
    h.update(salt);
    h.update(id.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The stored form of an e-mail address: a domain-separated SHA-256 of it, lower-cased and
/// trimmed, truncated to 128 bits, hex. The address itself is never stored or logged.
pub fn email_hash(email: &str) -> String {
    tagged_hash("dsync-email-v1", &email.trim().to_lowercase())
}

/// The stored form of the IdP's user id.
pub fn idp_hash(idp_id: &str) -> String {
    tagged_hash("dsync-idp-v1", idp_id.trim())
}

fn tagged_hash(tag: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(state: UserState, at: u64) -> DirUser {
        DirUser {
            id: "u".into(),
            directory_id: "d".into(),
            state,
            email_hash: None,
            idp_hash: None,
            updated_at: Some(EpochMillis(at)),
        }
    }

    fn group(name: &str, at: u64) -> DirGroup {
        DirGroup {
            id: "directory_group_g".into(),
            directory_id: "d".into(),
            name: name.into(),
            updated_at: Some(EpochMillis(at)),
        }
    }

    fn rules() -> Rules {
        Rules::parse(r#"{"organizations":{"org_1":{"by_group_name":{"Admins":["admin"]}}}}"#).expect("rules")
    }

    const TENANT: Tenant<'static> = Tenant {
        organization_id: "org_1",
        directory_id: "d",
    };

    #[test]
    fn content_follows_workos_versions_not_arrival() {
        let mut u = UserRecord::new("u");
        assert!(u.observe(Some(&user(UserState::Inactive, 20)), Obs(1)));
        let rv = u.rv;
        // An older version arriving later (a lagging read) changes nothing.
        u.observe(Some(&user(UserState::Active, 10)), Obs(2));
        assert_eq!(u.state, Some(UserState::Inactive));
        assert_eq!(u.rv, rv);
        assert!(u.observe(Some(&user(UserState::Active, 30)), Obs(3)));
        assert_eq!(u.rv, rv + 1, "state changed: rule-relevant version moves");
    }

    #[test]
    fn existence_and_membership_follow_observation_order() {
        let mut u = UserRecord::new("u");
        u.observe(Some(&user(UserState::Active, 1)), Obs(5));
        assert!(u.observe_member("g", true, Obs(6), u.rv, 1));
        // A sweep's absence as of an earlier listing start never undoes it.
        assert!(!u.observe_member("g", false, Obs(4), 0, 0));
        assert!(u.is_member("g"));
        // A 404 observed later deletes the user and every membership.
        u.observe(None, Obs(7));
        assert!(!u.is_live());
        assert!(!u.is_member("g"));
    }

    #[test]
    fn a_grant_needs_a_witness() {
        let r = rules();
        let ctx = Derive {
            rules: &r,
            rules_fp: "fp",
            tenant: TENANT,
        };
        let mut g = GroupRecord::new("directory_group_g");
        g.observe(Some(&group("Staff", 1)), Obs(1));
        let mut u = UserRecord::new("u");
        u.observe(Some(&user(UserState::Active, 1)), Obs(2));
        u.observe_member("directory_group_g", true, Obs(3), u.rv, g.nv);
        // The group is renamed to a granting name: the old observation is no witness for it.
        let (_, renamed) = g.observe(Some(&group("Admins", 2)), Obs(4));
        assert!(renamed);
        u.derive(&|gid: &str| (gid == g.group_id).then_some(&g), &ctx);
        assert!(
            u.entitlements.is_empty(),
            "a member seen under the old name is not granted by the new one"
        );
        assert_eq!(u.derived_with["directory_group_g"], g.nv);
        // Seen again under the new name: granted.
        u.observe_member("directory_group_g", true, Obs(5), u.rv, g.nv);
        let names = |gid: &str| (gid == g.group_id).then_some(&g);
        u.derive(&names, &ctx);
        assert!(u.entitlements.contains("admin"));
        // The user's state changes (reactivation, say): old observations are no witness either.
        u.observe(Some(&user(UserState::Inactive, 3)), Obs(6));
        u.observe(Some(&user(UserState::Active, 4)), Obs(7));
        u.derive(&names, &ctx);
        assert!(u.entitlements.is_empty());
    }

    #[test]
    fn floors_fold_from_the_inbox_and_gate_clearing() {
        let mut u = UserRecord::new("u");
        let e = Entry::Member {
            group_id: "g".into(),
            present: false,
            order: Order {
                created: EpochMillis(100),
                event_id: "event_1".into(),
            },
        };
        u.inbox.insert(e.encode());
        u.inbox.insert("junk".into());
        let folded = u.fold_inbox(EpochMillis(200));
        assert_eq!(folded.len(), 2, "junk leaves the inbox too");
        u.observe(Some(&user(UserState::Active, 1)), Obs(1));
        u.observe_member("g", true, Obs(2), u.rv, 1);
        assert!(!u.meets_floors(&|_| None));
        u.observe_member("g", false, Obs(3), u.rv, 1);
        assert!(u.meets_floors(&|_| None));
        assert!(!UserRecord::new("never-read").meets_floors(&|_| None));
    }

    #[test]
    fn hashes_normalize_and_separate_domains() {
        assert_eq!(email_hash(" Alice@Example.COM "), email_hash("alice@example.com"));
        assert_ne!(email_hash("x"), idp_hash("x"));
        assert_eq!(email_hash("a").len(), 32);
        assert_ne!(fingerprint(b"s1", "u"), fingerprint(b"s2", "u"));
        assert_ne!(fingerprint(b"", "ab"), fingerprint(b"a", "b"));
    }
}
