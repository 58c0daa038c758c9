//! The gate: a pure function of one consistent snapshot of the directory's head, the user's
//! record and the records of the user's groups. It fails closed: `Unknown`, never `Granted`,
//! whenever the snapshot holds an accepted change that is not applied yet.
//!
//! A user is *current* when, in the snapshot: the directory is not deleted, has no directory-wide
//! mark, is not missing and is linked; the user has no mark and has been read; none of its groups
//! has a mark; and its entitlements were derived with every group's current name version.
//! Because the snapshot is one consistent read (the store reads it in one transaction), no writer
//! can slip between the parts of the decision.

use crate::directory::UserState;
use crate::facts::{GroupRecord, Mark, UserRecord};

/// The gate's answer.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Granted,
    Denied,
    /// The view may be behind a change already accepted: treat as a denial, or ask again shortly.
    Unknown,
}

/// What the gate needs of the directory's head record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    pub deleted: bool,
    /// Directory-wide mark (`dsync.activated`, an unknown `dsync.*` type).
    pub mark: Mark,
    /// `GET /directories/{id}` answered 404 and nothing has answered otherwise since.
    pub missing: bool,
    /// The directory's state as last read (`None`: never read).
    pub state: Option<String>,
    pub organization_id: Option<String>,
}

/// What to answer for users of a directory that is not linked (inactive, invalid credentials,
/// unlinked...): WorkOS no longer syncs it, so what is stored may be frozen for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InactiveDirectories {
    /// `Unknown` for everyone (the default).
    #[default]
    Unknown,
    /// Serve the last synced view.
    Serve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub inactive_directories: InactiveDirectories,
}

/// Why a user's view is not current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Staleness {
    /// An event about the whole directory is accepted and not applied yet.
    DirectoryChanging,
    /// `GET /directories/{id}` answered 404; until it answers again, or the deletion is confirmed.
    DirectoryMissing,
    /// The directory is not linked in WorkOS (or its state was never read).
    DirectoryInactive,
    /// An event about the user is accepted and not applied yet.
    PendingEvent,
    /// Known only from an event: never read from WorkOS.
    NeverRead,
    /// An event about one of the user's groups is accepted and not applied yet.
    GroupChanging,
    /// One of the user's groups changed (renamed, deleted) since its entitlements were derived.
    Rederiving,
}

impl Staleness {
    /// A stable name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Staleness::DirectoryChanging => "directory_changing",
            Staleness::DirectoryMissing => "directory_missing",
            Staleness::DirectoryInactive => "directory_inactive",
            Staleness::PendingEvent => "pending_event",
            Staleness::NeverRead => "never_read",
            Staleness::GroupChanging => "group_changing",
            Staleness::Rederiving => "rederiving",
        }
    }
}

/// What the gate finds for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No such user, a deleted user, or a deleted directory: nobody to grant anything.
    NotFound,
    /// The user, and why its view is not current (`None`: current).
    Found(Option<Staleness>),
}

pub fn is_linked(state: &str) -> bool {
    matches!(state, "linked" | "active")
}

/// Judge one snapshot. `group` gives the snapshot's record of a group.
pub fn judge<'a>(
    head: &Head,
    user: Option<&UserRecord>,
    group: &dyn Fn(&str) -> Option<&'a GroupRecord>,
    policy: Policy,
) -> Verdict {
    if head.deleted {
        return Verdict::NotFound;
    }
    let Some(u) = user else {
        return Verdict::NotFound;
    };
    if u.exists == Some(false) || (u.exists.is_some() && u.state == Some(UserState::Deleted)) {
        return Verdict::NotFound;
    }
    Verdict::Found(staleness(head, u, group, policy))
}

fn staleness<'a>(
    head: &Head,
    u: &UserRecord,
    group: &dyn Fn(&str) -> Option<&'a GroupRecord>,
    policy: Policy,
) -> Option<Staleness> {
    if head.mark.dirty() {
        return Some(Staleness::DirectoryChanging);
    }
    if head.missing {
        return Some(Staleness::DirectoryMissing);
    }
    let linked = head.state.as_deref().is_some_and(is_linked);
    if !linked && policy.inactive_directories == InactiveDirectories::Unknown {
        return Some(Staleness::DirectoryInactive);
    }
    if u.mark.dirty() {
        return Some(Staleness::PendingEvent);
    }
    if u.exists.is_none() {
        return Some(Staleness::NeverRead);
    }
    let mut members = 0;
    for gid in u.member_of() {
        members += 1;
        let Some(g) = group(gid) else {
            return Some(Staleness::Rederiving);
        };
        if g.mark.dirty() {
            return Some(Staleness::GroupChanging);
        }
        if u.derived_with.get(gid) != Some(&g.nv) {
            return Some(Staleness::Rederiving);
        }
    }
    if members != u.derived_with.len() {
        return Some(Staleness::Rederiving);
    }
    None
}

/// The decision for one entitlement.
pub fn decide(verdict: &Verdict, user: Option<&UserRecord>, entitlement: &str) -> Decision {
    match (verdict, user) {
        (Verdict::Found(None), Some(u)) if u.entitlements.contains(entitlement) => Decision::Granted,
        (Verdict::Found(None), _) | (Verdict::NotFound, _) => Decision::Denied,
        (Verdict::Found(Some(_)), _) => Decision::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::EpochMillis;
    use crate::directory::{DirGroup, DirUser};
    use crate::facts::{Derive, Obs};
    use crate::rules::{Rules, Tenant};

    fn linked() -> Head {
        Head {
            state: Some("linked".into()),
            ..Head::default()
        }
    }

    fn setup() -> (UserRecord, GroupRecord) {
        let rules =
            Rules::parse(r#"{"organizations":{"org_1":{"by_group_name":{"Admins":["admin"]}}}}"#).expect("rules");
        let mut g = GroupRecord::new("directory_group_g");
        g.observe(
            Some(&DirGroup {
                id: "directory_group_g".into(),
                directory_id: "d".into(),
                name: "Admins".into(),
                updated_at: Some(EpochMillis(1)),
            }),
            Obs(1),
        );
        let mut u = UserRecord::new("u");
        u.observe(
            Some(&DirUser {
                id: "u".into(),
                directory_id: "d".into(),
                state: UserState::Active,
                email_hash: None,
                idp_hash: None,
                updated_at: Some(EpochMillis(1)),
            }),
            Obs(2),
        );
        u.observe_member("directory_group_g", true, Obs(3), u.rv, g.nv);
        let names = |gid: &str| (gid == "directory_group_g").then_some(&g);
        u.derive(
            &names,
            &Derive {
                rules: &rules,
                rules_fp: "fp",
                tenant: Tenant {
                    organization_id: "org_1",
                    directory_id: "d",
                },
            },
        );
        (u, g)
    }

    fn answer(head: &Head, u: &UserRecord, g: &GroupRecord) -> Decision {
        let groups = |gid: &str| (gid == g.group_id).then_some(g);
        let v = judge(head, Some(u), &groups, Policy::default());
        decide(&v, Some(u), "admin")
    }

    #[test]
    fn current_and_granted() {
        let (u, g) = setup();
        assert_eq!(answer(&linked(), &u, &g), Decision::Granted);
    }

    /// Every mark, anywhere in the snapshot, turns a grant into Unknown.
    #[test]
    fn any_mark_fails_closed() {
        let (u, g) = setup();
        let mut h = linked();
        h.mark.ver = 1;
        assert_eq!(answer(&h, &u, &g), Decision::Unknown);
        let mut u2 = u.clone();
        u2.mark.ver = 3;
        u2.mark.applied = 2;
        assert_eq!(answer(&linked(), &u2, &g), Decision::Unknown);
        let mut g2 = g.clone();
        g2.mark.ver = 1;
        assert_eq!(answer(&linked(), &u, &g2), Decision::Unknown);
    }

    #[test]
    fn a_group_changed_since_derivation_is_unknown() {
        let (u, mut g) = setup();
        g.observe(
            Some(&DirGroup {
                id: "directory_group_g".into(),
                directory_id: "d".into(),
                name: "Staff".into(),
                updated_at: Some(EpochMillis(2)),
            }),
            Obs(4),
        );
        assert_eq!(answer(&linked(), &u, &g), Decision::Unknown);
    }

    #[test]
    fn directory_status() {
        let (u, g) = setup();
        let mut h = linked();
        h.missing = true;
        assert_eq!(answer(&h, &u, &g), Decision::Unknown);
        let mut h = linked();
        h.state = Some("invalid_credentials".into());
        assert_eq!(answer(&h, &u, &g), Decision::Unknown);
        let groups = |gid: &str| (gid == g.group_id).then_some(&g);
        let serve = Policy {
            inactive_directories: InactiveDirectories::Serve,
        };
        assert_eq!(
            decide(&judge(&h, Some(&u), &groups, serve), Some(&u), "admin"),
            Decision::Granted
        );
        let mut h = linked();
        h.deleted = true;
        assert_eq!(answer(&h, &u, &g), Decision::Denied);
        assert_eq!(judge(&h, Some(&u), &groups, Policy::default()), Verdict::NotFound);
    }
}
