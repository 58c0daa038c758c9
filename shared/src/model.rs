//! The directory picture as stored, and the pure rules that change it.
//!
//! Every fact is an *observation* made by a read that began at a known instant. A stored fact is
//! replaced only by an observation whose read began no earlier (last-writer-wins by read start,
//! never by arrival order), so an older, slower read can never overwrite a newer one, whatever the
//! order in which events, retries and reconcile pages are applied. Memberships are kept per
//! (user, group) pair *with* absences: "not a member, as of T" is a fact too, so an older read
//! cannot re-create a membership that a newer read found absent.
//!
//! A user's entitlements live in the same record as the facts they derive from and are recomputed
//! in the same write, so a record is never half-applied.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clock::EpochMillis;
use crate::directory::UserState;
use crate::rules::{GroupRef, Rules, Tenant};

/// How long the absence of a membership is kept as a fence after it was observed. Longer than any
/// read can take to apply (a lease never outlives an invocation), so it only bounds record size.
pub const ABSENCE_KEPT: Duration = Duration::from_secs(7 * 86_400);

/// One (user, group) observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub present: bool,
    /// When the read that saw it began.
    pub at: EpochMillis,
}

/// A user of one directory: facts, and the entitlements derived from them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    pub user_id: String,
    /// `None` until the user itself has been read (a stub created by a group listing).
    pub state: Option<UserState>,
    pub state_at: Option<EpochMillis>,
    /// group id → the latest observation of the pair (absences included, see [`ABSENCE_KEPT`]).
    pub groups: BTreeMap<String, Membership>,
    /// Start of the latest *complete* read of the user's groups (it also established absences).
    pub groups_read_at: Option<EpochMillis>,
    /// SHA-256 (truncated, hex) of the normalized e-mail, for look-ups; never the e-mail itself.
    pub email_hash: Option<String>,
    /// SHA-256 (truncated, hex) of the IdP's id for the user.
    pub idp_hash: Option<String>,
    /// Start of the latest read of this user (state and every group) that is fully applied here.
    pub applied_at: Option<EpochMillis>,
    /// Derived: what the rules grant, for the facts above and the group names at `computed_at`.
    pub entitlements: BTreeSet<String>,
    pub computed_at: Option<EpochMillis>,
    /// Fingerprint of the rules the entitlements were computed with.
    pub rules_fp: String,
}

impl UserRecord {
    pub fn new(user_id: impl Into<String>) -> Self {
        UserRecord {
            user_id: user_id.into(),
            ..Default::default()
        }
    }

    /// Group ids the user is a member of, as stored.
    pub fn member_of(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().filter(|(_, m)| m.present).map(|(g, _)| g.as_str())
    }

    pub fn is_member(&self, gid: &str) -> bool {
        self.groups.get(gid).is_some_and(|m| m.present)
    }

    /// Apply a state read at `at`. Returns whether anything stored changed.
    pub fn observe_state(&mut self, state: &UserState, at: EpochMillis) -> bool {
        if self.state_at.is_some_and(|t| t > at) {
            return false;
        }
        let changed = self.state.as_ref() != Some(state);
        self.state = Some(state.clone());
        self.state_at = Some(at);
        changed
    }

    /// Apply one pair observation made by a read that began at `at`. Refused when a newer read of
    /// the pair, or a newer complete read of the user's groups, is already stored.
    /// Returns whether membership changed.
    pub fn observe_member(&mut self, gid: &str, present: bool, at: EpochMillis) -> bool {
        if self.groups_read_at.is_some_and(|t| t > at) {
            return false;
        }
        match self.groups.get_mut(gid) {
            Some(m) if m.at > at => false,
            Some(m) => {
                let changed = m.present != present;
                *m = Membership { present, at };
                changed
            }
            None => {
                self.groups.insert(gid.to_string(), Membership { present, at });
                present
            }
        }
    }

    /// Apply a complete read of the user's groups, begun at `at`: listed groups are present, every
    /// other stored pair absent. Refused as a whole if a newer complete read is stored; pairs with a
    /// newer single observation keep it. Returns the groups whose membership changed.
    pub fn observe_all_groups<'a>(
        &mut self,
        listed: impl IntoIterator<Item = &'a str>,
        at: EpochMillis,
    ) -> Option<BTreeSet<String>> {
        if self.groups_read_at.is_some_and(|t| t > at) {
            return None;
        }
        let listed: BTreeSet<&str> = listed.into_iter().collect();
        let mut changed = BTreeSet::new();
        for gid in &listed {
            if self.observe_member(gid, true, at) {
                changed.insert(gid.to_string());
            }
        }
        let others: Vec<String> = self
            .groups
            .keys()
            .filter(|g| !listed.contains(g.as_str()))
            .cloned()
            .collect();
        for gid in others {
            if self.observe_member(&gid, false, at) {
                changed.insert(gid);
            }
        }
        self.groups_read_at = Some(at);
        Some(changed)
    }

    /// The user is gone from WorkOS as of `at` (404, or absent from a complete listing):
    /// deleted state and no memberships. Returns the groups it left, or `None` if refused.
    pub fn observe_deleted(&mut self, at: EpochMillis) -> Option<BTreeSet<String>> {
        if self.state_at.is_some_and(|t| t > at) {
            return None;
        }
        self.observe_state(&UserState::Deleted, at);
        self.observe_all_groups(std::iter::empty(), at)
    }

    /// Mark that a read of the user begun at `at` is now fully applied.
    pub fn mark_applied(&mut self, at: EpochMillis) {
        if self.applied_at.is_none_or(|t| t < at) {
            self.applied_at = Some(at);
        }
    }

    /// Drop absences older than [`ABSENCE_KEPT`] (they no longer fence anything in practice).
    pub fn prune(&mut self, now: EpochMillis) {
        let horizon = now.saturating_sub(ABSENCE_KEPT);
        self.groups.retain(|_, m| m.present || m.at >= horizon);
    }

    /// Recompute the entitlements from the stored facts. Returns whether they changed.
    pub fn recompute(&mut self, ctx: &Derive<'_>) -> bool {
        let state = self.state.clone().unwrap_or(UserState::Other("unknown".into()));
        let names: Vec<(&str, &str)> = self
            .member_of()
            .filter_map(|g| ctx.names.name(g).map(|n| (g, n)))
            .collect();
        let ents = ctx
            .rules
            .entitlements(ctx.tenant, &state, names.iter().map(|(id, name)| GroupRef { id, name }));
        let changed = ents != self.entitlements;
        self.entitlements = ents;
        self.computed_at = Some(ctx.now);
        self.rules_fp = ctx.rules_fp.to_string();
        changed
    }
}

/// Group names by id, as stored; `None` for a deleted or unknown group.
pub trait GroupNames {
    fn name(&self, gid: &str) -> Option<&str>;
}

impl GroupNames for BTreeMap<String, GroupRecord> {
    fn name(&self, gid: &str) -> Option<&str> {
        self.get(gid).and_then(|g| g.name.as_deref())
    }
}

/// What a recompute needs besides the user's own facts.
pub struct Derive<'a> {
    pub rules: &'a Rules,
    pub rules_fp: &'a str,
    pub tenant: Tenant<'a>,
    pub names: &'a dyn GroupNames,
    pub now: EpochMillis,
}

/// A group of one directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupRecord {
    pub group_id: String,
    /// `None`: deleted in WorkOS.
    pub name: Option<String>,
    pub name_at: Option<EpochMillis>,
    /// When the name (or the deleted flag) last changed: its members' entitlements may differ.
    pub changed_at: Option<EpochMillis>,
    /// Start of the latest complete read of the group's members that is fully applied.
    pub members_applied_at: Option<EpochMillis>,
}

impl GroupRecord {
    pub fn new(group_id: impl Into<String>) -> Self {
        GroupRecord {
            group_id: group_id.into(),
            ..Default::default()
        }
    }

    /// Apply the group's name (or `None`: deleted) as read at `at`.
    /// Returns `(applied, changed)`: changed when the name or the deleted flag differ.
    pub fn observe(&mut self, name: Option<&str>, at: EpochMillis) -> (bool, bool) {
        if self.name_at.is_some_and(|t| t > at) {
            return (false, false);
        }
        let changed = self.name_at.is_some() && self.name.as_deref() != name;
        self.name = name.map(str::to_string);
        self.name_at = Some(at);
        if changed {
            self.changed_at = Some(at);
        }
        (true, changed)
    }

    pub fn is_deleted(&self) -> bool {
        self.name_at.is_some() && self.name.is_none()
    }

    pub fn mark_members_applied(&mut self, at: EpochMillis) {
        if self.members_applied_at.is_none_or(|t| t < at) {
            self.members_applied_at = Some(at);
        }
    }
}

/// What a queued event asks to be reflected, and when it came to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// WorkOS's `created_at` (WorkOS clock).
    pub created: Option<EpochMillis>,
    /// When the queue first accepted the message (AWS clock, like ours): the event existed then.
    pub received: Option<EpochMillis>,
}

impl Asked {
    /// Does a read that began at `read` reflect this event?
    ///
    /// Either causally (the read began after the event was on our queue, so after WorkOS made the
    /// change), or by clocks (it began `margin` after WorkOS created the event, which covers skew
    /// between WorkOS's clock and ours).
    pub fn reflected_by(&self, read: Option<EpochMillis>, margin: Duration) -> bool {
        let Some(read) = read else { return false };
        self.received.is_some_and(|r| read > r) || self.created.is_some_and(|c| read >= c.saturating_add(margin))
    }
}

/// A 64-bit fingerprint of an id, keyed by a per-run random salt: what a reconcile remembers of
/// each listed object until its sweep. A collision between a listed id and a vanished one would
/// keep a stale fact for one run (the next run uses another salt); with 64 bits that is about
/// `removed × listed / 2^64` per run, 5·10⁻¹² for a thousand removals in a 100,000-user listing.
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
    use proptest::prelude::*;

    const T: fn(u64) -> EpochMillis = EpochMillis;

    #[test]
    fn an_older_state_never_overwrites_a_newer_one() {
        let mut u = UserRecord::new("u");
        assert!(u.observe_state(&UserState::Inactive, T(20)));
        assert!(!u.observe_state(&UserState::Active, T(10)));
        assert_eq!(u.state, Some(UserState::Inactive));
        assert!(u.observe_state(&UserState::Active, T(30)));
    }

    #[test]
    fn an_absence_fences_an_older_presence() {
        let mut u = UserRecord::new("u");
        assert!(u.observe_member("g", true, T(10)));
        assert!(u.observe_member("g", false, T(20)));
        // A slower read that began at 15 saw the user in the group: refused.
        assert!(!u.observe_member("g", true, T(15)));
        assert!(!u.is_member("g"));
    }

    #[test]
    fn a_complete_read_fences_pairs_it_never_saw() {
        let mut u = UserRecord::new("u");
        u.observe_all_groups(["a"], T(20)).expect("applied");
        // A group listing that began before the user's complete read cannot add another group.
        assert!(!u.observe_member("b", true, T(15)));
        assert!(!u.is_member("b"));
        // One that began after it can.
        assert!(u.observe_member("b", true, T(25)));
        // An older complete read is refused as a whole.
        assert_eq!(u.observe_all_groups(["c"], T(18)), None);
        assert_eq!(u.member_of().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn deletion_removes_memberships_and_is_fenced_too() {
        let mut u = UserRecord::new("u");
        u.observe_state(&UserState::Active, T(10));
        u.observe_all_groups(["a", "b"], T(10));
        let left = u.observe_deleted(T(20)).expect("applied");
        assert_eq!(left, BTreeSet::from(["a".to_string(), "b".to_string()]));
        assert_eq!(u.state, Some(UserState::Deleted));
        assert!(!u.observe_state(&UserState::Active, T(15)));
        assert!(!u.observe_member("a", true, T(15)));
        assert_eq!(u.member_of().count(), 0);
    }

    #[test]
    fn coverage_is_causal_or_by_clock_with_a_margin() {
        let m = Duration::from_secs(5);
        let e = Asked {
            created: Some(T(100_000)),
            received: Some(T(101_000)),
        };
        assert!(!e.reflected_by(None, m));
        assert!(
            !e.reflected_by(Some(T(101_000)), m),
            "began as it was queued: not after"
        );
        assert!(e.reflected_by(Some(T(101_001)), m));
        let undated = Asked {
            created: Some(T(100_000)),
            received: None,
        };
        assert!(!undated.reflected_by(Some(T(104_999)), m));
        assert!(undated.reflected_by(Some(T(105_000)), m));
        let nothing = Asked {
            created: None,
            received: None,
        };
        assert!(!nothing.reflected_by(Some(T(u64::MAX)), m));
    }

    #[test]
    fn group_names_are_fenced_and_changes_noticed() {
        let mut g = GroupRecord::new("g");
        assert_eq!(
            g.observe(Some("A"), T(10)),
            (true, false),
            "first sight is not a change"
        );
        assert_eq!(g.observe(Some("B"), T(20)), (true, true));
        assert_eq!(g.observe(Some("C"), T(15)), (false, false));
        assert_eq!(g.observe(None, T(30)), (true, true));
        assert!(g.is_deleted());
        assert_eq!(g.changed_at, Some(T(30)));
    }

    #[test]
    fn hashes_normalize_and_separate_domains() {
        assert_eq!(email_hash(" Alice@Example.COM "), email_hash("alice@example.com"));
        assert_ne!(email_hash("x"), idp_hash("x"));
        assert_eq!(email_hash("a").len(), 32);
        assert_ne!(fingerprint(b"s1", "u"), fingerprint(b"s2", "u"));
        assert_ne!(fingerprint(b"", "ab"), fingerprint(b"a", "b"));
    }

    /// Observations applied in any order end in the state of the newest one, per pair.
    #[derive(Debug, Clone)]
    enum Obs {
        Pair(u8, bool, u64),
        All(Vec<u8>, u64),
        State(bool, u64),
    }

    fn obs() -> impl Strategy<Value = Obs> {
        prop_oneof![
            (0u8..4, any::<bool>(), 0u64..50).prop_map(|(g, p, t)| Obs::Pair(g, p, t)),
            (proptest::collection::vec(0u8..4, 0..4), 0u64..50).prop_map(|(gs, t)| Obs::All(gs, t)),
            (any::<bool>(), 0u64..50).prop_map(|(a, t)| Obs::State(a, t)),
        ]
    }

    fn apply(u: &mut UserRecord, o: &Obs) {
        match o {
            Obs::Pair(g, p, t) => {
                u.observe_member(&g.to_string(), *p, T(*t));
            }
            Obs::All(gs, t) => {
                let names: Vec<String> = gs.iter().map(u8::to_string).collect();
                u.observe_all_groups(names.iter().map(String::as_str), T(*t));
            }
            Obs::State(a, t) => {
                let s = if *a { UserState::Active } else { UserState::Inactive };
                u.observe_state(&s, T(*t));
            }
        }
    }

    proptest! {
        /// Applying the same observations in two different orders gives the same record, provided
        /// no two observations of the same fact share a read time (a read is one instant).
        #[test]
        fn observations_commute(mut list in proptest::collection::vec(obs(), 1..12), seed in any::<u64>()) {
            // Make read times unique: a read begins at one instant.
            for (i, o) in list.iter_mut().enumerate() {
                match o { Obs::Pair(_, _, x) | Obs::All(_, x) | Obs::State(_, x) => *x = *x * 1000 + i as u64 };
            }
            let mut a = UserRecord::new("u");
            for o in &list { apply(&mut a, o); }
            let mut shuffled = list.clone();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut shuffled);
            let mut b = UserRecord::new("u");
            for o in &shuffled { apply(&mut b, o); }
            let present = |u: &UserRecord| u.member_of().map(str::to_string).collect::<Vec<_>>();
            prop_assert_eq!(present(&a), present(&b));
            prop_assert_eq!(a.state, b.state);
        }
    }
}
