//! The read side, for the app's feature gate. It fails closed: a user whose view may be behind a
//! change we already know of is `Unknown`, never granted; a deleted directory has nobody.
//!
//! Every read is a strongly consistent read of the base table (no index), so a write the
//! processor has finished is visible to the very next check.
//!
//! A user's view is *current* when no received event about the user is still pending, none of
//! its groups has an event pending or a change still being carried to its members, and the user
//! itself has been read.
//! Find users the way an app knows them after SSO login: organization + e-mail, organization +
//! IdP id, or the directory user id (with or without its directory).

use std::collections::BTreeSet;

use crate::clock::EpochMillis;
use crate::directory::UserState;
use crate::model::{email_hash, idp_hash, UserRecord};
use crate::ports::state::{reflected, Ctl, LookupKind, StateStore};
use crate::ports::StoreError;

/// The gate's answer.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Granted,
    Denied,
    /// The view may be behind a change already received: the caller must decide (deny, or ask
    /// again shortly). [`UserView::allows`] treats it as a denial.
    Unknown,
}

/// Why a view is not current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staleness {
    /// An event about the user was received and is not applied yet.
    PendingEvent,
    /// One of the user's groups changed and the change has not reached this user yet.
    GroupChanging,
    /// The user is known from a group listing only; its own state was never read.
    NeverRead,
}

/// A user's entitlements as stored, and whether they can be trusted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub directory_id: String,
    pub user_id: String,
    pub state: Option<UserState>,
    pub entitlements: BTreeSet<String>,
    /// Ids of the groups the user is a member of.
    pub groups: Vec<String>,
    /// `None` when current.
    pub stale: Option<Staleness>,
}

impl UserView {
    pub fn is_current(&self) -> bool {
        self.stale.is_none()
    }

    /// Does the user have this entitlement? `Unknown` while the view is not current.
    pub fn decide(&self, entitlement: &str) -> Decision {
        if !self.is_current() {
            return Decision::Unknown;
        }
        if self.entitlements.contains(entitlement) {
            Decision::Granted
        } else {
            Decision::Denied
        }
    }

    /// The fail-closed gate: true only for `Granted`.
    pub fn allows(&self, entitlement: &str) -> bool {
        self.decide(entitlement) == Decision::Granted
    }

    /// `pending`: the user's pending time, if it has one.
    fn of(directory_id: &str, u: UserRecord, ctl: &Ctl, pending: Option<EpochMillis>) -> Self {
        let stale = if pending.is_some_and(|t| !reflected(t, u.applied_at, ctl.full_applied_at)) {
            Some(Staleness::PendingEvent)
        } else if u.state.is_none() {
            Some(Staleness::NeverRead)
        } else if u.member_of().any(|g| {
            // A group with an event received and not yet read, or whose change is still being
            // carried to its members (computed in the same millisecond as the change was seen
            // counts as before it).
            // Group events too many to record one by one: any group may be one of them.
            ctl.groups_overflowing()
                || ctl.pending_groups.contains(g)
                || ctl.propagating.get(g).is_some_and(|since| {
                    // A complete read that began after the change has carried it to everyone.
                    ctl.full_applied_at.is_none_or(|f| *since >= f) && u.computed_at.is_none_or(|c| c <= *since)
                })
        }) {
            Some(Staleness::GroupChanging)
        } else {
            None
        };
        UserView {
            directory_id: directory_id.to_string(),
            groups: u.member_of().map(str::to_string).collect(),
            user_id: u.user_id,
            state: u.state,
            entitlements: u.entitlements,
            stale,
        }
    }
}

/// What a look-up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(UserView),
    /// No such user (or deleted, or its directory is).
    NotFound,
    /// Several live users match (the same address in two directories of one organization).
    Ambiguous(Vec<UserView>),
}

impl Lookup {
    /// The gate over a look-up: nobody is denied, several is unknown.
    pub fn decide(&self, entitlement: &str) -> Decision {
        match self {
            Lookup::Found(v) => v.decide(entitlement),
            Lookup::NotFound => Decision::Denied,
            Lookup::Ambiguous(_) => Decision::Unknown,
        }
    }

    pub fn allows(&self, entitlement: &str) -> bool {
        self.decide(entitlement) == Decision::Granted
    }
}

/// Read access for applications. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EntitlementReader<S> {
    store: S,
}

impl<S: StateStore> EntitlementReader<S> {
    pub fn new(store: S) -> Self {
        EntitlementReader { store }
    }

    /// A user's pending time: from the control record's first page, or (when there are more
    /// pending users than it holds) read on its own.
    async fn pending(&self, dir: &str, ctl: &Ctl, user_id: &str) -> Result<Option<EpochMillis>, StoreError> {
        match ctl.pending_users.get(user_id) {
            Some(t) => Ok(Some(*t)),
            None if ctl.pending_users_more => self.store.pending_user(dir, user_id).await,
            None => Ok(None),
        }
    }

    /// A user of a directory (3 strongly consistent reads: control record, pending users, user;
    /// a 4th while more users are pending than the control record's first page holds).
    pub async fn user(&self, directory_id: &str, user_id: &str) -> Result<Lookup, StoreError> {
        let ctl = self.store.ctl(directory_id).await?;
        if ctl.deleted_at.is_some() {
            return Ok(Lookup::NotFound);
        }
        let Some(u) = self.store.users(directory_id, &[user_id.to_string()]).await?.pop() else {
            return Ok(Lookup::NotFound);
        };
        if u.value.state == Some(UserState::Deleted) {
            return Ok(Lookup::NotFound);
        }
        let pending = self.pending(directory_id, &ctl, user_id).await?;
        Ok(Lookup::Found(UserView::of(directory_id, u.value, &ctl, pending)))
    }

    /// A user by directory user id alone.
    pub async fn user_by_id(&self, user_id: &str) -> Result<Lookup, StoreError> {
        match self.store.alias(user_id).await? {
            None => Ok(Lookup::NotFound),
            Some(dir) => self.user(&dir, user_id).await,
        }
    }

    /// A user by organization and e-mail address (as the SSO profile gives it).
    pub async fn user_by_email(&self, organization_id: &str, email: &str) -> Result<Lookup, StoreError> {
        self.by_hash(organization_id, LookupKind::Email, &email_hash(email))
            .await
    }

    /// A user by organization and the IdP's id for it (the SSO profile's `idp_id`).
    pub async fn user_by_idp_id(&self, organization_id: &str, idp_id: &str) -> Result<Lookup, StoreError> {
        self.by_hash(organization_id, LookupKind::Idp, &idp_hash(idp_id)).await
    }

    async fn by_hash(&self, org: &str, kind: LookupKind, hash: &str) -> Result<Lookup, StoreError> {
        let mut found = Vec::new();
        for (dir, uid) in self.store.lookups(org, kind, hash).await? {
            let ctl = self.store.ctl(&dir).await?;
            if ctl.deleted_at.is_some() || ctl.organization_id.as_deref() != Some(org) {
                continue;
            }
            let Some(u) = self.store.users(&dir, std::slice::from_ref(&uid)).await?.pop() else {
                continue;
            };
            let stored = match kind {
                LookupKind::Email => u.value.email_hash.as_deref(),
                LookupKind::Idp => u.value.idp_hash.as_deref(),
            };
            // A look-up entry outlives a changed address until it is cleaned: check the user.
            if stored != Some(hash) || u.value.state == Some(UserState::Deleted) {
                continue;
            }
            let pending = self.pending(&dir, &ctl, &uid).await?;
            found.push(UserView::of(&dir, u.value, &ctl, pending));
        }
        Ok(match found.len() {
            0 => Lookup::NotFound,
            1 => Lookup::Found(found.remove(0)),
            _ => Lookup::Ambiguous(found),
        })
    }

    /// The ids of a group's current members, in id order.
    pub async fn group_members(&self, directory_id: &str, group_id: &str) -> Result<Vec<String>, StoreError> {
        if self.store.ctl(directory_id).await?.deleted_at.is_some() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .members_page(directory_id, group_id, after.as_deref(), 1000)
                .await?;
            ids.extend(page.items);
            match page.after {
                Some(a) => after = Some(a),
                None => return Ok(ids),
            }
        }
    }

    /// Every live user of a directory with their entitlements, in id order.
    pub async fn directory(&self, directory_id: &str) -> Result<Vec<UserView>, StoreError> {
        let ctl = self.store.ctl(directory_id).await?;
        if ctl.deleted_at.is_some() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.users_page(directory_id, after.as_deref(), 1000).await?;
            for u in page.items {
                if u.value.state != Some(UserState::Deleted) {
                    let pending = self.pending(directory_id, &ctl, &u.value.user_id).await?;
                    out.push(UserView::of(directory_id, u.value, &ctl, pending));
                }
            }
            match page.after {
                Some(a) => after = Some(a),
                None => return Ok(out),
            }
        }
    }

    /// Group names by id, as last read (for display).
    pub async fn group_names(&self, directory_id: &str) -> Result<Vec<(String, Option<String>)>, StoreError> {
        Ok(self
            .store
            .groups(directory_id)
            .await?
            .into_iter()
            .map(|g| (g.value.group_id, g.value.name))
            .collect())
    }
}
