//! Stream subscriptions (consumer groups) on RabbitMQ: the state machine every node applies
//! from the subscription's state stream (see [`crate::rsm`]).
//!
//! Members, generations, the assignment and the committed offsets are replicated: joins,
//! heartbeats, leaves, commits and resets are records, applied in order with the proposer's
//! clock reading (a member silent for longer than the session timeout is removed when a
//! later record is applied, and is treated as gone by any reader at a later time). Every
//! membership change starts a new generation and reassigns partitions round-robin over the
//! sorted member ids, as on the embedded engine.
//!
//! Fetch positions are the node's own: every node applies the same records, so each keeps
//! positions consistent with the assignment, and a fetch moves its node's positions only.
//! A member that fetches through another node continues from the committed offsets there
//! (at-least-once).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wharf_broker::{BrokerError, Committed, Membership, StreamConfig};

use crate::rsm::Machine;

/// A change to the group.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Op {
    Join {
        now: i64,
        member: String,
    },
    Heartbeat {
        now: i64,
        member: String,
    },
    Leave {
        now: i64,
        member: String,
    },
    Commit {
        now: i64,
        member: String,
        offsets: Vec<(u32, u64)>,
    },
    /// Sets the committed offsets of the partitions given (the others keep theirs).
    Reset {
        committed: Vec<(u32, u64)>,
    },
    Fence,
}

/// What a record did.
#[derive(Debug)]
pub(crate) enum Outcome {
    Nothing,
    Membership(Result<Membership, BrokerError>),
    Left(Result<(), BrokerError>),
    Committed(Result<Vec<Committed>, BrokerError>),
}

#[derive(Debug)]
struct Member {
    last_seen: i64,
    /// This node's fetch position per owned partition.
    positions: BTreeMap<u32, u64>,
}

/// A group's state, as a snapshot holds it.
#[derive(Serialize, Deserialize)]
pub(crate) struct GroupSnap {
    committed: Vec<u64>,
    /// Member → last heard of.
    members: BTreeMap<String, i64>,
    generation: u64,
    owner: Vec<Option<String>>,
}

/// One stream subscription's state.
#[derive(Debug)]
pub(crate) struct GroupMachine {
    name: String,
    config: StreamConfig,
    committed: Vec<u64>,
    members: BTreeMap<String, Member>,
    generation: u64,
    owner: Vec<Option<String>>,
}

impl GroupMachine {
    pub(crate) fn new(name: &str, config: StreamConfig, initial: &[u64]) -> Self {
        Self {
            name: name.to_owned(),
            config,
            committed: initial.to_vec(),
            members: BTreeMap::new(),
            generation: 0,
            owner: vec![None; initial.len()],
        }
    }

    pub(crate) fn config(&self) -> &StreamConfig {
        &self.config
    }

    pub(crate) fn committed(&self) -> &[u64] {
        &self.committed
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    fn timeout(&self) -> i64 {
        i64::try_from(self.config.session_timeout_ms).unwrap_or(i64::MAX)
    }

    fn alive(&self, m: &Member, now: i64) -> bool {
        now.saturating_sub(m.last_seen) <= self.timeout()
    }

    /// Members alive at `now`, by id.
    pub(crate) fn members_at(&self, now: i64) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| self.alive(m, now))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// When `member` was last heard of, if it is alive at `now`.
    pub(crate) fn last_seen(&self, member: &str, now: i64) -> Option<i64> {
        self.members
            .get(member)
            .filter(|m| self.alive(m, now))
            .map(|m| m.last_seen)
    }

    fn unknown(&self, member: &str) -> BrokerError {
        BrokerError::UnknownMember {
            subscription: self.name.clone(),
            member: member.to_owned(),
        }
    }

    /// `member`'s fetch positions and the generation, if it is alive at `now`.
    pub(crate) fn positions(
        &self,
        member: &str,
        now: i64,
    ) -> Result<(u64, Vec<(u32, u64)>), BrokerError> {
        let m = self
            .members
            .get(member)
            .filter(|m| self.alive(m, now))
            .ok_or_else(|| self.unknown(member))?;
        Ok((
            self.generation,
            m.positions.iter().map(|(p, o)| (*p, *o)).collect(),
        ))
    }

    /// Moves this node's fetch positions of `member`, if the generation is still `generation`.
    pub(crate) fn advance(&mut self, member: &str, generation: u64, to: &[(u32, u64)]) -> bool {
        if self.generation != generation {
            return false;
        }
        let Some(m) = self.members.get_mut(member) else {
            return false;
        };
        for &(p, o) in to {
            // Never below where a commit applied meanwhile moved it.
            let pos = m.positions.entry(p).or_insert(o);
            *pos = (*pos).max(o);
        }
        true
    }

    fn expire(&mut self, now: i64) {
        let timeout = self.timeout();
        let before = self.members.len();
        self.members
            .retain(|_, m| now.saturating_sub(m.last_seen) <= timeout);
        if self.members.len() != before {
            self.rebalance();
        }
    }

    fn rebalance(&mut self) {
        self.generation += 1;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for (p, owner) in self.owner.iter_mut().enumerate() {
            *owner = (!ids.is_empty()).then(|| ids[p % ids.len()].clone());
        }
        for (id, member) in self.members.iter_mut() {
            member
                .positions
                .retain(|p, _| self.owner.get(*p as usize).and_then(Option::as_ref) == Some(id));
            for (p, o) in self.owner.iter().enumerate() {
                if o.as_ref() == Some(id) {
                    member
                        .positions
                        .entry(p as u32)
                        .or_insert(self.committed[p]);
                }
            }
        }
    }

    fn membership(&self, member: &str) -> Membership {
        Membership {
            member_id: member.to_owned(),
            generation: self.generation,
            partitions: self
                .owner
                .iter()
                .enumerate()
                .filter(|(_, o)| o.as_deref() == Some(member))
                .map(|(p, _)| p as u32)
                .collect(),
        }
    }

    fn commit(
        &mut self,
        member: &str,
        offsets: &[(u32, u64)],
    ) -> Result<Vec<Committed>, BrokerError> {
        if !self.members.contains_key(member) {
            return Err(self.unknown(member));
        }
        for &(p, _) in offsets {
            if self.owner.get(p as usize).and_then(Option::as_deref) != Some(member) {
                return Err(BrokerError::NotAssigned {
                    member: member.to_owned(),
                    partition: p,
                    generation: self.generation,
                });
            }
        }
        for &(p, o) in offsets {
            let slot = &mut self.committed[p as usize];
            *slot = (*slot).max(o);
        }
        // What a member committed it has consumed: a node that did not serve its fetches
        // continues after it.
        if let Some(m) = self.members.get_mut(member) {
            for &(p, _) in offsets {
                let committed = self.committed[p as usize];
                if let Some(pos) = m.positions.get_mut(&p) {
                    *pos = (*pos).max(committed);
                }
            }
        }
        Ok(offsets
            .iter()
            .map(|&(p, _)| Committed {
                partition: p,
                offset: self.committed[p as usize],
            })
            .collect())
    }
}

impl Machine for GroupMachine {
    type Op = Op;
    type Outcome = Outcome;
    type Snap = GroupSnap;

    fn fence() -> Op {
        Op::Fence
    }

    fn snapshot(&self) -> GroupSnap {
        GroupSnap {
            committed: self.committed.clone(),
            members: self
                .members
                .iter()
                .map(|(id, m)| (id.clone(), m.last_seen))
                .collect(),
            generation: self.generation,
            owner: self.owner.clone(),
        }
    }

    fn restore(&mut self, snap: GroupSnap) -> bool {
        if snap.committed.len() != self.committed.len() || snap.owner.len() != self.owner.len() {
            return false;
        }
        self.committed = snap.committed;
        self.generation = snap.generation;
        self.owner = snap.owner;
        // Fetch positions are this node's: its members start at the committed offsets.
        self.members = snap
            .members
            .into_iter()
            .map(|(id, last_seen)| {
                let positions = self
                    .owner
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.as_deref() == Some(id.as_str()))
                    .map(|(p, _)| (p as u32, self.committed[p]))
                    .collect();
                (
                    id,
                    Member {
                        last_seen,
                        positions,
                    },
                )
            })
            .collect();
        true
    }

    fn apply(&mut self, _offset: u64, op: Op) -> Outcome {
        match op {
            Op::Join { now, member } => {
                self.expire(now);
                let is_new = !self.members.contains_key(&member);
                self.members
                    .entry(member.clone())
                    .or_insert_with(|| Member {
                        last_seen: now,
                        positions: BTreeMap::new(),
                    })
                    .last_seen = now;
                if is_new {
                    self.rebalance();
                }
                Outcome::Membership(Ok(self.membership(&member)))
            }
            Op::Heartbeat { now, member } => {
                self.expire(now);
                Outcome::Membership(match self.members.get_mut(&member) {
                    Some(m) => {
                        m.last_seen = m.last_seen.max(now);
                        Ok(self.membership(&member))
                    }
                    None => Err(self.unknown(&member)),
                })
            }
            Op::Leave { now, member } => {
                self.expire(now);
                Outcome::Left(if self.members.remove(&member).is_some() {
                    self.rebalance();
                    Ok(())
                } else {
                    Err(self.unknown(&member))
                })
            }
            Op::Commit {
                now,
                member,
                offsets,
            } => {
                self.expire(now);
                let r = self.commit(&member, &offsets);
                if let (Ok(_), Some(m)) = (&r, self.members.get_mut(&member)) {
                    m.last_seen = m.last_seen.max(now);
                }
                Outcome::Committed(r)
            }
            Op::Reset { committed } => {
                // Members continue from the offsets given, even where they equal the
                // committed ones (a member may have fetched past them).
                let mut changed = Vec::new();
                for (p, o) in committed {
                    if let Some(slot) = self.committed.get_mut(p as usize) {
                        *slot = o;
                        changed.push(p);
                    }
                }
                for member in self.members.values_mut() {
                    for (p, pos) in member.positions.iter_mut() {
                        if changed.contains(p) {
                            *pos = self.committed[*p as usize];
                        }
                    }
                }
                self.generation += 1;
                Outcome::Committed(Ok(self
                    .committed
                    .iter()
                    .enumerate()
                    .map(|(p, &offset)| Committed {
                        partition: p as u32,
                        offset,
                    })
                    .collect()))
            }
            Op::Fence => Outcome::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupMachine {
        GroupMachine::new(
            "s",
            StreamConfig {
                session_timeout_ms: 10_000,
                ..StreamConfig::default()
            },
            &[0, 0, 0, 0],
        )
    }

    fn membership(o: Outcome) -> Membership {
        match o {
            Outcome::Membership(Ok(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn joins_split_and_silence_expires() {
        let mut g = group();
        let a = membership(g.apply(
            0,
            Op::Join {
                now: 0,
                member: "a".into(),
            },
        ));
        assert_eq!(a.partitions, [0, 1, 2, 3]);
        let b = membership(g.apply(
            0,
            Op::Join {
                now: 1,
                member: "b".into(),
            },
        ));
        assert_eq!(b.partitions, [1, 3]);
        assert_eq!(g.members_at(10_001), ["b"], "a is silent past the timeout");
        let a = membership(g.apply(
            0,
            Op::Heartbeat {
                now: 10_000,
                member: "a".into(),
            },
        ));
        assert_eq!(a.partitions, [0, 2]);
        let a = membership(g.apply(
            0,
            Op::Heartbeat {
                now: 10_002,
                member: "a".into(),
            },
        ));
        assert_eq!(
            a.partitions,
            [0, 1, 2, 3],
            "b expired when a later record was applied"
        );
    }

    #[test]
    fn a_snapshot_restores_the_group() {
        let mut g = group();
        g.apply(
            0,
            Op::Join {
                now: 0,
                member: "a".into(),
            },
        );
        g.apply(
            0,
            Op::Join {
                now: 0,
                member: "b".into(),
            },
        );
        g.apply(
            0,
            Op::Commit {
                now: 0,
                member: "a".into(),
                offsets: vec![(0, 5)],
            },
        );
        let json = serde_json::to_vec(&g.snapshot()).unwrap();
        let mut copy = group();
        assert!(copy.restore(serde_json::from_slice(&json).unwrap()));
        assert_eq!(copy.committed(), g.committed());
        assert_eq!(copy.generation(), g.generation());
        assert_eq!(copy.members_at(0), g.members_at(0));
        assert_eq!(
            copy.positions("a", 0).unwrap(),
            (g.generation(), vec![(0, 5), (2, 0)])
        );
        let m = membership(copy.apply(
            0,
            Op::Heartbeat {
                now: 1,
                member: "b".into(),
            },
        ));
        assert_eq!(m.partitions, [1, 3]);
    }

    #[test]
    fn commits_need_ownership_and_never_go_back() {
        let mut g = group();
        g.apply(
            0,
            Op::Join {
                now: 0,
                member: "a".into(),
            },
        );
        g.apply(
            0,
            Op::Join {
                now: 0,
                member: "b".into(),
            },
        );
        let Outcome::Committed(r) = g.apply(
            0,
            Op::Commit {
                now: 0,
                member: "a".into(),
                offsets: vec![(1, 5)],
            },
        ) else {
            panic!()
        };
        assert!(matches!(
            r,
            Err(BrokerError::NotAssigned { partition: 1, .. })
        ));
        let Outcome::Committed(r) = g.apply(
            0,
            Op::Commit {
                now: 0,
                member: "a".into(),
                offsets: vec![(0, 5)],
            },
        ) else {
            panic!()
        };
        assert_eq!(r.unwrap()[0].offset, 5);
        let Outcome::Committed(r) = g.apply(
            0,
            Op::Commit {
                now: 0,
                member: "a".into(),
                offsets: vec![(0, 3)],
            },
        ) else {
            panic!()
        };
        assert_eq!(r.unwrap()[0].offset, 5);
        g.apply(
            0,
            Op::Reset {
                committed: vec![(0, 1), (1, 1), (2, 1), (3, 1)],
            },
        );
        assert_eq!(g.committed(), [1, 1, 1, 1]);
        g.apply(
            0,
            Op::Reset {
                committed: vec![(2, 0)],
            },
        );
        assert_eq!(g.committed(), [1, 1, 0, 1], "only the partitions given");
    }
}
