//! Floors: what an accepted event asserts about WorkOS, as a lower bound a read must reach before
//! it counts as reflecting the event (never as the state itself).
//!
//! WorkOS's read API may lag its events (a re-fetch made just after an event can return the
//! object as it was before). Each accepted event therefore leaves a *floor* on the object it
//! names: the object's `updated_at` must be at least the event's `data.updated_at`; a deleted
//! object must read as gone; a membership event's pair must read as the event says. A read that
//! contradicts a floor is not applied and does not clear the object's mark. The newest floor per
//! fact wins, newest by WorkOS's own order of events (`created_at`, then the event id), never by
//! our clocks. A floor stops binding [`FLOOR_TTL`] after its event was created: WorkOS's read lag
//! is seconds, and a later change whose event never reaches us must not be refused for ever.
//!
//! Markers (the receiver, the events poller, the processor) add floors as small strings to a
//! set on the object's record (idempotent: the same event gives the same string); the lease
//! holder folds them into [`Floors`] whenever it writes the record.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::EpochMillis;

/// How long a floor binds after its event's `created_at`.
pub const FLOOR_TTL: Duration = Duration::from_secs(3600);

/// WorkOS's order of events: `created_at`, then the event id (WorkOS ids sort by creation).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Order {
    pub created: EpochMillis,
    pub event_id: String,
}

impl Order {
    fn expired(&self, now: EpochMillis, ttl: Duration) -> bool {
        self.created.saturating_add(ttl) < now
    }
}

/// One assertion of one event, as markers store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The object's `updated_at` is at least `at`.
    Version { at: EpochMillis, order: Order },
    /// The object is deleted in WorkOS (final: ids are never reused).
    Gone { order: Order },
    /// The user is (or is not) a member of the group.
    Member {
        group_id: String,
        present: bool,
        order: Order,
    },
}

impl Entry {
    pub fn order(&self) -> &Order {
        match self {
            Entry::Version { order, .. } | Entry::Gone { order } | Entry::Member { order, .. } => order,
        }
    }

    /// The stored form: `v|<at>|<created>|<event>`, `g|<created>|<event>`,
    /// `m|<group>|<0 or 1>|<created>|<event>`.
    pub fn encode(&self) -> String {
        match self {
            Entry::Version { at, order } => format!("v|{}|{}|{}", at.0, order.created.0, order.event_id),
            Entry::Gone { order } => format!("g|{}|{}", order.created.0, order.event_id),
            Entry::Member {
                group_id,
                present,
                order,
            } => format!(
                "m|{group_id}|{}|{}|{}",
                u8::from(*present),
                order.created.0,
                order.event_id
            ),
        }
    }

    /// Parse a stored entry; `None` for anything malformed (ignored, never fatal).
    pub fn decode(s: &str) -> Option<Entry> {
        let parts: Vec<&str> = s.split('|').collect();
        let order = |c: &str, e: &str| -> Option<Order> {
            (!e.is_empty()).then_some(())?;
            Some(Order {
                created: EpochMillis(c.parse().ok()?),
                event_id: e.to_string(),
            })
        };
        match parts.as_slice() {
            ["v", at, c, e] => Some(Entry::Version {
                at: EpochMillis(at.parse().ok()?),
                order: order(c, e)?,
            }),
            ["g", c, e] => Some(Entry::Gone { order: order(c, e)? }),
            ["m", g, p, c, e] if !g.is_empty() => Some(Entry::Member {
                group_id: (*g).to_string(),
                present: match *p {
                    "1" => true,
                    "0" => false,
                    _ => return None,
                },
                order: order(c, e)?,
            }),
            _ => None,
        }
    }
}

/// The newest assertion per fact of one object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Floors {
    /// The content's `updated_at` must be at least this.
    pub version: Option<(EpochMillis, Order)>,
    /// Deleted in WorkOS.
    pub gone: Option<Order>,
    /// Per group: member or not (users only).
    pub members: BTreeMap<String, (bool, Order)>,
}

/// What a read saw of an object, or what is stored of it, as far as floors go.
#[derive(Clone, Copy)]
pub struct Seen<'a> {
    /// `None`: WorkOS answered 404 / the object is stored as deleted.
    pub version: Option<EpochMillis>,
    /// Whether the user is a member of a group (`None`: not known from this read).
    pub member: &'a dyn Fn(&str) -> Option<bool>,
}

impl Floors {
    /// Fold entries in: the newest per fact wins; expired ones are dropped.
    pub fn fold<'a>(&mut self, entries: impl IntoIterator<Item = &'a Entry>) {
        for e in entries {
            match e {
                Entry::Version { at, order } => {
                    // The highest bound wins (a newer event never lowers what an older one set).
                    if self.version.as_ref().is_none_or(|(a, _)| at > a) {
                        self.version = Some((*at, order.clone()));
                    }
                }
                Entry::Gone { order } => {
                    if self.gone.as_ref().is_none_or(|o| order > o) {
                        self.gone = Some(order.clone());
                    }
                }
                Entry::Member {
                    group_id,
                    present,
                    order,
                } => {
                    let newer = self.members.get(group_id).is_none_or(|(_, o)| order > o);
                    if newer {
                        self.members.insert(group_id.clone(), (*present, order.clone()));
                    }
                }
            }
        }
    }

    /// Drop what no longer binds at `now`.
    pub fn expire(&mut self, now: EpochMillis, ttl: Duration) {
        if self.version.as_ref().is_some_and(|(_, o)| o.expired(now, ttl)) {
            self.version = None;
        }
        if self.gone.as_ref().is_some_and(|o| o.expired(now, ttl)) {
            self.gone = None;
        }
        self.members.retain(|_, (_, o)| !o.expired(now, ttl));
    }

    pub fn is_empty(&self) -> bool {
        self.version.is_none() && self.gone.is_none() && self.members.is_empty()
    }

    /// Does what was seen (or is stored) agree with every floor? A membership assertion is moot
    /// once a later event deleted the user, or the group (`group_gone` gives a group's deletion
    /// floor).
    pub fn admit(&self, seen: &Seen<'_>, group_gone: &dyn Fn(&str) -> Option<Order>) -> bool {
        if self.gone.is_some() {
            // Final: anything but "gone" is a lagging read.
            return seen.version.is_none();
        }
        if let Some((at, _)) = &self.version {
            match seen.version {
                Some(v) if v >= *at => {}
                _ => return false,
            }
        }
        self.members.iter().all(|(gid, (present, order))| {
            if group_gone(gid).is_some_and(|g| g > *order) {
                return true;
            }
            if seen.version.is_none() {
                // A deleted user is a member of nothing.
                return !present;
            }
            match (seen.member)(gid) {
                Some(m) => m == *present,
                // Not part of this read: it neither meets nor breaks the assertion.
                None => false,
            }
        })
    }

    /// Would observing this one membership contradict a floor? (Listings apply fact by fact.)
    pub fn refuses_member(&self, gid: &str, present: bool, group_gone: &dyn Fn(&str) -> Option<Order>) -> bool {
        if self.gone.is_some() {
            return present;
        }
        match self.members.get(gid) {
            Some((want, order)) => *want != present && group_gone(gid).is_none_or(|g| g < *order),
            None => false,
        }
    }

    /// Would observing the object at `version` (`None`: gone) contradict a floor?
    pub fn refuses_version(&self, version: Option<EpochMillis>) -> bool {
        match (version, &self.gone, &self.version) {
            (Some(_), Some(_), _) => true,
            (Some(v), None, Some((at, _))) => v < *at,
            (None, None, Some(_)) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(t: u64, id: &str) -> Order {
        Order {
            created: EpochMillis(t),
            event_id: id.to_string(),
        }
    }

    fn no_groups_gone(_: &str) -> Option<Order> {
        None
    }

    #[test]
    fn entries_round_trip_and_junk_is_ignored() {
        let es = [
            Entry::Version {
                at: EpochMillis(5),
                order: o(7, "event_1"),
            },
            Entry::Gone { order: o(8, "event_2") },
            Entry::Member {
                group_id: "g".into(),
                present: false,
                order: o(9, "event_3"),
            },
        ];
        for e in &es {
            assert_eq!(Entry::decode(&e.encode()).as_ref(), Some(e));
        }
        for junk in ["", "v|x|1|e", "m|g|2|1|e", "g|1|", "m||1|1|e", "z|1"] {
            assert_eq!(Entry::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_newest_assertion_per_fact_wins_in_any_order() {
        let add = Entry::Member {
            group_id: "g".into(),
            present: true,
            order: o(10, "event_a"),
        };
        let remove = Entry::Member {
            group_id: "g".into(),
            present: false,
            order: o(10, "event_b"),
        };
        let mut a = Floors::default();
        a.fold([&add, &remove]);
        let mut b = Floors::default();
        b.fold([&remove, &add]);
        assert_eq!(a, b);
        assert!(!a.members["g"].0, "same millisecond: the later id wins");
    }

    #[test]
    fn a_lagging_read_is_not_admitted() {
        let mut f = Floors::default();
        f.fold([&Entry::Version {
            at: EpochMillis(100),
            order: o(100, "e"),
        }]);
        let none = |_: &str| None;
        let old = Seen {
            version: Some(EpochMillis(99)),
            member: &none,
        };
        let new = Seen {
            version: Some(EpochMillis(100)),
            member: &none,
        };
        let gone = Seen {
            version: None,
            member: &none,
        };
        assert!(!f.admit(&old, &no_groups_gone));
        assert!(f.admit(&new, &no_groups_gone));
        assert!(!f.admit(&gone, &no_groups_gone), "a 404 after a create is lag");
    }

    #[test]
    fn membership_assertions_and_what_makes_them_moot() {
        let mut f = Floors::default();
        f.fold([&Entry::Member {
            group_id: "g".into(),
            present: false,
            order: o(10, "e1"),
        }]);
        let member = |g: &str| (g == "g").then_some(true);
        let not_member = |g: &str| (g == "g").then_some(false);
        let still = Seen {
            version: Some(EpochMillis(1)),
            member: &member,
        };
        let left = Seen {
            version: Some(EpochMillis(1)),
            member: &not_member,
        };
        assert!(!f.admit(&still, &no_groups_gone), "the removal is not visible yet");
        assert!(f.admit(&left, &no_groups_gone));
        assert!(f.refuses_member("g", true, &no_groups_gone));
        assert!(!f.refuses_member("g", false, &no_groups_gone));

        let mut added = Floors::default();
        added.fold([&Entry::Member {
            group_id: "g".into(),
            present: true,
            order: o(10, "e1"),
        }]);
        let later_deleted = |_: &str| Some(o(11, "e2"));
        assert!(
            added.admit(&left, &later_deleted),
            "the group was deleted after the add"
        );
        assert!(!added.refuses_member("g", false, &later_deleted));
    }

    #[test]
    fn gone_is_final_and_floors_expire() {
        let mut f = Floors::default();
        f.fold([&Entry::Gone { order: o(10, "e") }]);
        assert!(f.refuses_version(Some(EpochMillis(50))));
        assert!(!f.refuses_version(None));
        assert!(f.refuses_member("g", true, &no_groups_gone));
        f.expire(EpochMillis(10 + 3_600_001), FLOOR_TTL);
        assert!(f.is_empty());
    }
}
