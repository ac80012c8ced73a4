//! The intra-rack exchange's planner: which host of a rack takes each chunk of an artifact
//! from the relay (its *owner*), and from whom every other host of the rack takes it.
//!
//! It is pure: the relay feeds it what it knows (the hosts taking part, what each holds, each
//! one's upload budget, who failed) and serves each host its part of the answer; hosts only
//! follow it (Owl's model). Each chunk leaves the relay once, to its owner, which serves it
//! to the rest of the rack once it holds and has verified it, so the relay's egress per
//! release stays near one copy of the artifact, and the rack's hosts share the rest.
//!
//! - A chunk some eligible host already holds is not taken from the relay again: a later
//!   wave of a rollout takes everything from the hosts of the earlier ones.
//! - An owner keeps, from one plan to the next, what it holds and the next few chunks of its
//!   share (on their way), so its fetches do not move under it; the rest is shared anew
//!   among the hosts taking part now. A host that failed (dead, slow, or served bad bytes)
//!   is no longer eligible, and everything it owed goes to the others.
//! - A host far slower than the others (less than half the median rate) serves nobody:
//!   [`Problem::without_slow_members`].
//! - New chunks go to the eligible host whose share, over its upload budget, would end
//!   soonest, so a host with a quarter of the others' budget owns about a quarter as much.
//!   Every other host takes a chunk from its owner, so what a host uploads is its planned
//!   share, whenever each host asks.

use std::collections::BTreeMap;

/// Chunks of its share an owner keeps from one plan to the next before it holds them: as
/// many as a host has on their way from the relay at once.
pub const KEPT_AHEAD: usize = 4;

/// One host of the rack taking part in one artifact's exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// Which chunks it holds (verified), by index; as long as the artifact's chunk list.
    pub holds: Vec<bool>,
    /// Bytes per second it may upload to its peers; 0: it serves nobody (it has no chunk
    /// server, or it failed for this artifact).
    pub up: u64,
    /// Bytes per second it can receive.
    pub down: u64,
}

/// What the planner is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Each chunk's size, by index.
    pub chunk_bytes: Vec<u64>,
    pub members: Vec<Member>,
    /// The relay's egress budget, bytes per second.
    pub relay_out: u64,
}

/// Who takes each chunk from the relay: a member id, or nobody (no member can serve; then
/// every host takes it from the relay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub owners: Vec<Option<String>>,
}

/// Where one transfer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Relay,
    /// A member, by index in [`Problem::members`].
    Host(usize),
}

/// One chunk moving to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub chunk: usize,
    pub from: Source,
    pub to: usize,
}

impl Problem {
    /// Takes every member that moves bytes at less than half the median member's rate (the
    /// lesser of its upload and download budgets) out of serving: it would hold the rest of
    /// its rack back (it still receives everything, from the others).
    pub fn without_slow_members(mut self) -> Self {
        let rate = |m: &Member| m.up.min(m.down);
        let mut rates: Vec<u64> = self.members.iter().filter(|m| m.up > 0).map(rate).collect();
        rates.sort_unstable();
        if let Some(&median) = rates.get(rates.len() / 2) {
            for m in &mut self.members {
                if rate(m).saturating_mul(2) < median {
                    m.up = 0;
                }
            }
        }
        self
    }

    /// Members by id.
    fn index(&self) -> BTreeMap<&str, usize> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.as_str(), i))
            .collect()
    }

    fn eligible(&self, m: usize) -> bool {
        self.members.get(m).is_some_and(|x| x.up > 0)
    }

    fn holds(&self, m: usize, chunk: usize) -> bool {
        self.members
            .get(m)
            .and_then(|x| x.holds.get(chunk))
            .copied()
            .unwrap_or(false)
    }
}

/// Orders members by the time their `load` takes at their upload budget, then by index.
fn by_share(load: &[u64], problem: &Problem, a: usize, b: usize) -> std::cmp::Ordering {
    let secs = |m: usize| load[m] as f64 / problem.members[m].up.max(1) as f64;
    secs(a).total_cmp(&secs(b)).then(a.cmp(&b))
}

/// The owners of every chunk of `problem`, keeping `previous`'s where they are still
/// eligible and hold the chunk or will soon (see [`KEPT_AHEAD`]).
pub fn plan(problem: &Problem, previous: Option<&Plan>) -> Plan {
    let n = problem.chunk_bytes.len();
    let index = problem.index();
    // Bytes each member is expected to serve, to weigh the next assignment: an owner serves
    // every other member lacking the chunk; a holder serves an owner that lacks it (the
    // holders of a chunk share that).
    let lacking = |c: usize, m: usize| {
        (0..problem.members.len())
            .filter(|&x| x != m && !problem.holds(x, c))
            .count() as u64
    };
    let shared = |c: usize, m: usize| problem.chunk_bytes[c] * lacking(c, m);
    let mut load = vec![0u64; problem.members.len()];
    for c in 0..n {
        let holders: Vec<usize> = (0..problem.members.len())
            .filter(|&m| problem.eligible(m) && problem.holds(m, c))
            .collect();
        for &m in &holders {
            load[m] += problem.chunk_bytes[c] / holders.len() as u64;
        }
    }
    let mut owners: Vec<Option<usize>> = vec![None; n];
    // Pass 1: previous owners that are still eligible keep what they hold and the next
    // `KEPT_AHEAD` chunks of their share (likely on their way); the rest is shared anew among
    // the members of now, so the first host to ask does not keep the whole artifact.
    let mut ahead = vec![0usize; problem.members.len()];
    for (c, owner) in owners.iter_mut().enumerate() {
        let kept = previous
            .and_then(|p| p.owners.get(c))
            .and_then(|o| o.as_deref())
            .and_then(|id| index.get(id).copied())
            .filter(|&m| problem.eligible(m))
            .filter(|&m| {
                if problem.holds(m, c) {
                    return true;
                }
                ahead[m] += 1;
                ahead[m] <= KEPT_AHEAD
            });
        if let Some(m) = kept {
            load[m] += shared(c, m);
            *owner = Some(m);
        }
    }
    // Pass 2: the rest go to an eligible host that lacks them (it takes the chunk from a
    // holder, or from the relay, and serves it on), where its serving would end soonest.
    for (c, owner) in owners.iter_mut().enumerate() {
        if owner.is_some() {
            continue;
        }
        let eligible: Vec<usize> = (0..problem.members.len())
            .filter(|&m| problem.eligible(m))
            .collect();
        let lacking: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&m| !problem.holds(m, c))
            .collect();
        let candidates = if lacking.is_empty() {
            eligible
        } else {
            lacking
        };
        let best = candidates.into_iter().min_by(|&a, &b| {
            let ends = |m: usize| (load[m] + shared(c, m)) as f64 / problem.members[m].up as f64;
            ends(a).total_cmp(&ends(b)).then(a.cmp(&b))
        });
        if let Some(m) = best {
            load[m] += shared(c, m);
            *owner = Some(m);
        }
    }
    Plan {
        owners: owners
            .into_iter()
            .map(|o| o.map(|m| problem.members[m].id.clone()))
            .collect(),
    }
}

/// Every transfer `plan` makes: a chunk's owner takes it from a member that holds it, else
/// from the relay; every other member lacking it takes it from its owner (which serves it
/// once it holds it), else (no eligible owner) from a holder, else from the relay.
pub fn transfers(problem: &Problem, plan: &Plan) -> Vec<Transfer> {
    let index = problem.index();
    let held =
        |c: usize| (0..problem.members.len()).any(|m| problem.eligible(m) && problem.holds(m, c));
    // The relay sends every chunk nobody can serve: that is its load before it helps out.
    let relay_out = problem.relay_out.max(1) as f64;
    let mut relay: u64 = (0..problem.chunk_bytes.len())
        .filter(|&c| !held(c))
        .map(|c| problem.chunk_bytes[c])
        .sum();
    let mut serving = vec![0u64; problem.members.len()];
    let mut out = Vec::new();
    for (c, &size) in problem.chunk_bytes.iter().enumerate() {
        let owner = plan
            .owners
            .get(c)
            .and_then(|o| o.as_deref())
            .and_then(|id| index.get(id).copied())
            .filter(|&m| problem.eligible(m));
        for to in 0..problem.members.len() {
            if problem.holds(to, c) {
                continue;
            }
            // The others take it from its owner, so each host serves its planned share. The
            // owner (or, with none, each host) takes it from the least busy holder, or from
            // the relay where that ends sooner (a slow holder's share); with no holder, from
            // the relay.
            let host = match owner.filter(|&o| o != to) {
                Some(o) => Some(o),
                None => (0..problem.members.len())
                    .filter(|&m| m != to && problem.eligible(m) && problem.holds(m, c))
                    .min_by(|&a, &b| by_share(&serving, problem, a, b)),
            };
            let from = match host {
                // Only a holder with less than half the relay's budget is helped out: a
                // later wave must not take the relay's egress back.
                Some(h)
                    if owner == Some(to)
                        && problem.members[h].up.saturating_mul(2) <= problem.relay_out =>
                {
                    let by_host = (serving[h] + size) as f64 / problem.members[h].up as f64;
                    if (relay + size) as f64 / relay_out < by_host {
                        Source::Relay
                    } else {
                        Source::Host(h)
                    }
                }
                Some(h) => Source::Host(h),
                None => Source::Relay,
            };
            match from {
                Source::Host(h) => serving[h] += size,
                // A chunk nobody holds is counted above already.
                Source::Relay if held(c) => relay += size,
                Source::Relay => {}
            }
            out.push(Transfer { chunk: c, from, to });
        }
    }
    out
}

/// The transfers of member `to` alone, in the order to fetch them: by their place in their
/// owners' shares (an owner takes its share in index order, so a host asks a peer for a
/// chunk about when the peer has it), and in each round its own from the relay first (the
/// others wait for those).
pub fn transfers_for(problem: &Problem, plan: &Plan, to: usize) -> Vec<Transfer> {
    let mut mine: Vec<Transfer> = transfers(problem, plan)
        .into_iter()
        .filter(|t| t.to == to)
        .collect();
    // A chunk's place in its owner's share: the owner takes its share in index order.
    let mut rank = vec![0usize; problem.chunk_bytes.len()];
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, o) in plan.owners.iter().enumerate() {
        if let (Some(o), Some(r)) = (o.as_deref(), rank.get_mut(c)) {
            let k = seen.entry(o).or_default();
            *r = *k;
            *k += 1;
        }
    }
    mine.sort_by_key(|t| {
        (
            rank.get(t.chunk).copied().unwrap_or(0),
            !matches!(t.from, Source::Relay),
            t.chunk,
        )
    });
    mine
}

/// The least time `transfers` can take under every NIC's budget: the most loaded NIC's
/// bytes over its budget (the relay's egress, each member's upload and download).
pub fn planned_secs(problem: &Problem, transfers: &[Transfer]) -> f64 {
    let mut relay = 0u64;
    let mut up = vec![0u64; problem.members.len()];
    let mut down = vec![0u64; problem.members.len()];
    for t in transfers {
        let size = problem.chunk_bytes.get(t.chunk).copied().unwrap_or(0);
        match t.from {
            Source::Relay => relay += size,
            Source::Host(h) => up[h] += size,
        }
        down[t.to] += size;
    }
    let secs = |bytes: u64, budget: u64| {
        if bytes == 0 {
            0.0
        } else {
            bytes as f64 / budget.max(1) as f64
        }
    };
    let mut worst = secs(relay, problem.relay_out);
    for (m, member) in problem.members.iter().enumerate() {
        worst = worst
            .max(secs(up[m], member.up))
            .max(secs(down[m], member.down));
    }
    worst
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
