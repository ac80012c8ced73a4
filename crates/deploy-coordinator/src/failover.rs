//! Failover, for both ways a leader goes away.
//!
//! - **Stopped on purpose** ([`hand_over`]): a leading node that is asked to stop (SIGTERM, a
//!   rolling restart) stops taking writes, waits until a voter has every entry it has, and
//!   sends that voter Raft's `TimeoutNow`. The voter stands for election at once; the old
//!   leader, whose log is no longer, grants it the vote, and with its own vote that is a
//!   majority of three. Only then does the node stop serving. Unavailable: one vote round.
//!   (A leader refuses votes within `election_timeout_max` of its own election, so one
//!   elected moments ago first leads that long, still taking writes.)
//! - **Dead** ([`watch_leader`]): openraft 0.9 makes a follower wait out the leader's lease
//!   (`election_timeout_max`, refreshed by every heartbeat) and then a random election timeout
//!   of its own before it stands, and the other voters refuse it while their lease lasts. A
//!   follower that has heard nothing for two heartbeats tries the leader's port: when the
//!   connection is refused (the process is gone) or times out, the voter with the longest log
//!   among those still answering (then the lowest name, so votes do not split) stands as soon
//!   as its lease has run out, instead of a random timeout later. A leader that answers but is
//!   slow is left to openraft's timers, so this never adds an election the timers would not.
//!
//! The leases themselves are untouched: a voter never grants a vote while it has heard from a
//! leader within `election_timeout_max`, which is what keeps a healthy group's leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use deploy_proto::v1 as pb;
use deploy_proto::v1::raft_service_client::RaftServiceClient;
use deploy_raft::types::NodeId;
use openraft::ServerState;
use tracing::{debug, info, warn};

use crate::group::{each, AnyGroup};
use crate::node::Node;

/// What one group's replica knows for failover, beside openraft's metrics.
#[derive(Debug, Default)]
pub struct Failover {
    /// When an AppendEntries (entries or a heartbeat) last arrived, in ms of [`clock`].
    heard_ms: AtomicU64,
    /// Set while this leader hands over: writes are refused so the log stops growing.
    handing_over: AtomicBool,
    /// When the watch first saw this replica lead (ms of [`clock`]; 0: not leading).
    leading_since_ms: AtomicU64,
}

impl Failover {
    /// An AppendEntries arrived: some leader is alive.
    pub fn heard(&self) {
        self.heard_ms.store(clock(), Ordering::Relaxed);
    }

    /// How long since an AppendEntries last arrived (since start when none has).
    pub fn quiet(&self) -> Duration {
        Duration::from_millis(clock().saturating_sub(self.heard_ms.load(Ordering::Relaxed)))
    }

    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Relaxed)
    }

    /// Records whether this replica leads now (the watch calls it every tick).
    fn saw_leading(&self, leading: bool) {
        let since = &self.leading_since_ms;
        if !leading {
            since.store(0, Ordering::Relaxed);
        } else if since.load(Ordering::Relaxed) == 0 {
            since.store(clock().max(1), Ordering::Relaxed);
        }
    }

    /// How long this replica has led, as the watch saw it (`None`: not seen leading).
    fn leading_for(&self) -> Option<Duration> {
        match self.leading_since_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(clock().saturating_sub(at))),
        }
    }
}

/// Milliseconds since this process first asked: monotonic, cheap to store in an atomic.
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// How long a stopping leader tries to hand over in all.
const HAND_OVER_PATIENCE: Duration = Duration::from_secs(2);
/// How long one `TimeoutNow` has to make its voter the leader before the leader asks again.
const ATTEMPT_PATIENCE: Duration = Duration::from_millis(300);
/// A probe of the leader's port that takes longer than this counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Past the lease, so that the other voters' leases (refreshed by the same last heartbeat,
/// give or take a scheduling delay) have run out too.
const LEASE_MARGIN: Duration = Duration::from_millis(15);

/// Hands the leadership of every group this node leads to an up-to-date voter (see the
/// module doc), each bounded by [`HAND_OVER_PATIENCE`]. A group with no voter to take it
/// (a single-voter group, or none caught up) is left as it is: its followers elect as after
/// a crash.
pub async fn hand_over(node: &Node) {
    let groups: Vec<AnyGroup<'_>> = node.groups().filter(|g| g.is_leader()).collect();
    let handovers = groups.into_iter().map(|g| async move {
        let started = Instant::now();
        match each!(g, h => hand_over_group(node, h.raft.clone(), &h.failover, g).await) {
            Ok(to) => info!(group = %g.name(), to = %to, ms = started.elapsed().as_millis() as u64, "handed the leadership over"),
            Err(why) => warn!(group = %g.name(), %why, "could not hand the leadership over; the followers will elect"),
        }
    });
    futures::future::join_all(handovers).await;
}

async fn hand_over_group<C: deploy_raft::GroupTypes>(
    node: &Node,
    raft: openraft::Raft<C>,
    failover: &Failover,
    g: AnyGroup<'_>,
) -> Result<String, String> {
    // A voter refuses every vote within the lease of the leader it follows, and so does a
    // leader within `election_timeout_max` of its election: a leader elected moments ago
    // (the last one stopped in a rolling restart) first leads out its own lease, still taking
    // writes, so that it can grant its successor the vote.
    let t = &node.config.raft;
    let tick = Duration::from_millis(t.heartbeat_ms.max(10));
    let own_lease = Duration::from_millis(t.election_timeout_max_ms) + tick + LEASE_MARGIN;
    let led = failover.leading_for().unwrap_or_default();
    if led < own_lease {
        tokio::time::sleep(own_lease - led).await;
    }
    failover.handing_over.store(true, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + HAND_OVER_PATIENCE;
    let mut rx = raft.metrics();
    let me = rx.borrow().id;
    let mut why = String::from("no voter caught up with the log");
    while tokio::time::Instant::now() < deadline {
        // The voter with every entry this leader has (no new write comes in now), the lowest
        // name on a tie so the choice is predictable.
        let Ok(Ok(m)) = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|m| m.state != ServerState::Leader || caught_up_voter(m, node).is_some()),
        )
        .await
        .map(|r| r.map(|m| m.clone())) else {
            break;
        };
        if m.state != ServerState::Leader {
            // Stepped down (a campaign with a higher term reached it): whoever wins.
            return match tokio::time::timeout_at(
                deadline,
                rx.wait_for(|m| m.state != ServerState::Leader && successor(m, me).is_some()),
            )
            .await
            {
                Ok(Ok(m)) => successor(&m, me).ok_or_else(|| "no leader".into()),
                _ => Err("stepped down, and no other leader appeared in time".into()),
            };
        }
        let Some((_, target)) = caught_up_voter(&m, node) else {
            continue;
        };
        match ask_to_stand(node, g, &target, m.current_term).await {
            Ok(()) => {}
            Err(e) => {
                why = e;
                continue;
            }
        }
        // Won within one campaign's time, or ask again (a voter that refused its vote had
        // heard from this leader a moment later; an entry that slipped in lost it the vote).
        let attempt = (tokio::time::Instant::now() + ATTEMPT_PATIENCE).min(deadline);
        match tokio::time::timeout_at(
            attempt,
            rx.wait_for(|m| m.state != ServerState::Leader && successor(m, me).is_some()),
        )
        .await
        {
            Ok(Ok(m)) => return successor(&m, me).ok_or_else(|| "no leader".into()),
            Ok(Err(_)) => return Err("the group stopped".into()),
            Err(_) => {
                let m = raft.metrics().borrow().clone();
                why = format!(
                    "{} did not take over (here: {:?}, term {}, leader {:?})",
                    target.name, m.state, m.current_term, m.current_leader
                );
                debug!(group = %g.name(), %why, "asking again");
            }
        }
    }
    Err(why)
}

/// The name of the leader other than `me` that `m` knows of.
fn successor(
    m: &openraft::RaftMetrics<NodeId, deploy_raft::types::DeployNode>,
    me: NodeId,
) -> Option<String> {
    let leader = m.current_leader.filter(|l| *l != me)?;
    let membership = m.membership_config.membership();
    membership.get_node(&leader).map(|n| n.name.clone())
}

/// Sends `target` a `TimeoutNow` for `g` at `term`.
async fn ask_to_stand(
    node: &Node,
    g: AnyGroup<'_>,
    target: &deploy_raft::types::DeployNode,
    term: u64,
) -> Result<(), String> {
    let channel = node.pool.get(&target.addr).map_err(|e| e.to_string())?;
    let mut req = tonic::Request::new(pb::TimeoutNowRequest {
        group: g.name().to_string(),
        term,
    });
    req.set_timeout(ATTEMPT_PATIENCE);
    RaftServiceClient::new(channel)
        .timeout_now(req)
        .await
        .map(|_| ())
        .map_err(|e| format!("{} refused TimeoutNow: {}", target.name, e.message()))
}

/// The voter other than this leader whose matched log reaches this leader's last entry.
fn caught_up_voter(
    m: &openraft::RaftMetrics<NodeId, deploy_raft::types::DeployNode>,
    node: &Node,
) -> Option<(NodeId, deploy_raft::types::DeployNode)> {
    let last = m.last_log_index?;
    let membership = m.membership_config.membership();
    let replication = m.replication.as_ref()?;
    let mut best: Option<(NodeId, deploy_raft::types::DeployNode)> = None;
    for id in membership.voter_ids() {
        let Some(n) = membership.get_node(&id) else {
            continue;
        };
        if n.name == node.me.as_str() {
            continue;
        }
        let matched = replication
            .get(&id)
            .and_then(|l| l.as_ref())
            .map(|l| l.index);
        if matched < Some(last) {
            continue;
        }
        if best.as_ref().is_none_or(|(_, b)| n.name < b.name) {
            best = Some((id, n.clone()));
        }
    }
    best
}

/// Answers a stopping leader's `TimeoutNow`: stands for election at once, unless this
/// replica already moved past `term` or leads.
pub async fn timeout_now(g: AnyGroup<'_>, term: u64) -> Result<(), tonic::Status> {
    let m = g.metrics();
    if m.current_term > term || m.state == ServerState::Leader {
        return Ok(());
    }
    if !m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == m.id)
    {
        return Err(tonic::Status::failed_precondition(format!(
            "this replica is not a voter of group {}",
            g.name()
        )));
    }
    info!(group = %g.name(), term, "the leader is handing over: standing for election");
    each!(g, h => h.raft.trigger().elect().await)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

/// Every group of `node`: a follower that finds its leader gone stands at once (module doc).
pub fn spawn_leader_watch(node: Arc<Node>) {
    let names: Vec<_> = node.groups().map(|g| g.name().clone()).collect();
    for name in names {
        tokio::spawn(watch_leader(node.clone(), name));
    }
}

async fn watch_leader(node: Arc<Node>, name: deploy_types::GroupName) {
    let t = &node.config.raft;
    let every = Duration::from_millis(t.heartbeat_ms.max(10));
    let lease = Duration::from_millis(t.election_timeout_max_ms);
    // The leader (id, term) already judged gone, so each loss is acted on once.
    let mut judged: Option<(NodeId, u64)> = None;
    let stopped = node.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(every) => {}
        }
        let Some(g) = node.group(&name) else { return };
        let m = g.metrics();
        let failover = each!(g, h => h.failover.clone());
        failover.saw_leading(m.state == ServerState::Leader);
        let Some(leader) = m.current_leader else {
            continue;
        };
        if m.state != ServerState::Follower
            || leader == m.id
            || failover.quiet() < 2 * every
            || judged == Some((leader, m.current_term))
        {
            continue;
        }
        let membership = m.membership_config.membership();
        if !membership.voter_ids().any(|v| v == m.id) {
            continue;
        }
        let Some(addr) = membership.get_node(&leader).map(|n| n.addr.clone()) else {
            continue;
        };
        if answers(&addr).await {
            continue;
        }
        judged = Some((leader, m.current_term));
        if !first_to_stand(&node, g, leader).await {
            debug!(group = %name, "leader gone; another voter stands first");
            continue;
        }
        // Stand once this voter's lease, and so the others', has run out.
        let quiet = failover.quiet();
        if quiet < lease + LEASE_MARGIN {
            tokio::time::sleep(lease + LEASE_MARGIN - quiet).await;
        }
        let now = g.metrics();
        if now.current_leader != Some(leader) || now.state != ServerState::Follower {
            continue;
        }
        info!(group = %name, gone = leader, quiet_ms = failover.quiet().as_millis() as u64, "the leader's port does not answer: standing for election");
        stand(g, leader).await;
    }
}

/// Campaigns a replica's own lease margin may have cost it, at most.
const CAMPAIGNS: usize = 3;
/// How long one campaign waits for its votes before the next.
const CAMPAIGN_PATIENCE: Duration = Duration::from_millis(60);

/// Stands for election; if the campaign has not won within [`CAMPAIGN_PATIENCE`] (a voter
/// whose lease was refreshed a little after this one's refused it) and no other leader
/// appeared, stands again, up to [`CAMPAIGNS`] times, rather than wait out openraft's random
/// timeout.
async fn stand(g: AnyGroup<'_>, gone: NodeId) {
    let mut rx = g.watch();
    for _ in 0..CAMPAIGNS {
        if let Err(e) = each!(g, h => h.raft.trigger().elect().await) {
            warn!(group = %g.name(), error = %e, "cannot stand for election");
            return;
        }
        let settled = |m: &openraft::RaftMetrics<NodeId, deploy_raft::types::DeployNode>| {
            m.state == ServerState::Leader
                || (m.state == ServerState::Follower && m.current_leader.is_some_and(|l| l != gone))
        };
        if let Ok(Ok(_)) = tokio::time::timeout(CAMPAIGN_PATIENCE, rx.wait_for(settled)).await {
            return;
        }
        debug!(group = %g.name(), "campaign not won yet: standing again");
    }
}

/// Whether something accepts connections on `addr` within [`PROBE_TIMEOUT`].
async fn answers(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Whether this replica should stand first: its log is the longest of the voters that
/// answer (the dead leader aside), the lowest name on a tie. A voter that does not answer
/// in time is left out; one with a longer log would refuse this one its vote anyway.
async fn first_to_stand(node: &Node, g: AnyGroup<'_>, dead: NodeId) -> bool {
    let m = g.metrics();
    let membership = m.membership_config.membership();
    let mine = (
        m.last_log_index.unwrap_or(0),
        std::cmp::Reverse(node.me.to_string()),
    );
    let peers: Vec<_> = membership
        .voter_ids()
        .filter(|id| *id != dead && *id != m.id)
        .filter_map(|id| membership.get_node(&id).cloned())
        .collect();
    let asks = peers.into_iter().map(|peer| async move {
        let channel = node.pool.get(&peer.addr).ok()?;
        let mut req = tonic::Request::new(pb::NodeStatusRequest {
            group: g.name().to_string(),
        });
        req.set_timeout(PROBE_TIMEOUT);
        let s = RaftServiceClient::new(channel)
            .node_status(req)
            .await
            .ok()?
            .into_inner();
        Some((s.last_log_index, std::cmp::Reverse(peer.name.clone())))
    });
    let theirs = futures::future::join_all(asks).await;
    theirs.into_iter().flatten().all(|t| mine > t)
}
