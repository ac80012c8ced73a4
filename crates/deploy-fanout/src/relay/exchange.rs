//! The relay's side of the intra-rack exchange: it tracks which hosts of its rack take part
//! in each pinned artifact's exchange and what each holds, runs the planner
//! ([`crate::exchange`]) and tells each host where to take each chunk it lacks. Hosts report
//! a peer that failed them; a peer that served bad bytes is counted and, like a dead or slow
//! one, serves nobody for the rest of that artifact's exchange.
//!
//! Memory is bounded by the rack: one entry per pinned artifact (at most two per service of
//! the rack's goals), holding at most one entry per host of the rack.

use std::time::Instant;

use super::*;
use crate::exchange::{self as planner, Member, Problem, Source};
use deploy_artifact::serve::{self, text};

/// A host that has not asked for an artifact's plan for this long no longer takes part in
/// its exchange, unless it holds every chunk and still reports.
pub const MEMBER_TTL: Duration = Duration::from_secs(3);
/// A host whose last report is older than this is taken for dead: it serves nobody.
pub const REPORT_TTL: Duration = Duration::from_secs(3);
/// What a host without a stated upload budget is assumed to upload, bytes per second.
const DEFAULT_UP: u64 = 1 << 30;

/// One artifact's exchange.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    /// Per host of the rack: when it last asked, and what it held then.
    members: BTreeMap<String, (Instant, Vec<bool>)>,
    /// Hosts that serve nobody for the rest of this exchange, and why.
    failed: BTreeMap<String, String>,
    plan: planner::Plan,
}

/// A host's peer, as its reports state it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Where its chunk server is (`http://host:port` or `https://host:port`).
    pub url: String,
    /// Bytes per second it may upload to its peers (0: unlimited).
    #[serde(default)]
    pub up: u64,
    /// Bytes per second it can receive (0: unlimited).
    #[serde(default)]
    pub down: u64,
}

/// Longest peer URL a report may state.
pub const MAX_PEER_URL: usize = 256;

impl PeerInfo {
    /// Checks a reported peer: an http(s) URL of a host and port, and nothing more.
    pub fn check(&self) -> Result<(), String> {
        if self.url.len() > MAX_PEER_URL {
            return Err(format!("peer URL longer than {MAX_PEER_URL} bytes"));
        }
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"))
            .ok_or("a peer URL starts with http:// or https://")?;
        let ok = rest
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            && rest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
        if !ok {
            return Err(format!(
                "peer URL {:?} is not http(s)://host:port",
                self.url.chars().take(64).collect::<String>()
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
pub(super) struct PlanQuery {
    host: String,
    /// The chunks the host holds: one bit per chunk, first chunk in the high bit of the first
    /// byte, as hex.
    #[serde(default)]
    have: String,
}

/// One chunk a host is to take, and from where (`None`: the relays, then the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedChunk {
    pub index: usize,
    /// The peer's chunk server, and the host it is.
    pub from: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
}

/// What a host is told for one artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangePlan {
    /// Whether the rack's hosts share chunks (off: every chunk from the relays).
    pub peers: bool,
    pub chunks: Vec<PlannedChunk>,
    /// Hosts taking part: a host fetches from about as many peers at once, since each peer's
    /// upload is shared by every host fetching from it.
    #[serde(default)]
    pub members: usize,
}

/// Bits `have` as one flag per chunk of `n`.
pub fn parse_have(have: &str, n: usize) -> Result<Vec<bool>, String> {
    if have.is_empty() {
        return Ok(vec![false; n]);
    }
    let bytes = hex::decode(have).map_err(|_| "have is not hex".to_string())?;
    if bytes.len() != n.div_ceil(8) {
        return Err(format!(
            "have names {} bytes, not {}",
            bytes.len(),
            n.div_ceil(8)
        ));
    }
    Ok((0..n)
        .map(|i| bytes[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect())
}

/// Flags as the hex bits [`parse_have`] reads.
pub fn format_have(flags: &[bool]) -> String {
    let mut bytes = vec![0u8; flags.len().div_ceil(8)];
    for (i, f) in flags.iter().enumerate() {
        if *f {
            bytes[i / 8] |= 0x80 >> (i % 8);
        }
    }
    hex::encode(bytes)
}

impl Inner {
    /// Host `host`'s part of the plan of `digest` (whose chunks weigh `sizes`), after taking
    /// note of what it holds.
    fn plan_for(
        &self,
        digest: Digest,
        sizes: Vec<u64>,
        host: &str,
        have: Vec<bool>,
    ) -> ExchangePlan {
        let now = Instant::now();
        let reports = lock(&self.reports);
        let seen = lock(&self.seen);
        let mut all = lock(&self.exchanges);
        let ex = all.entry(digest).or_default();
        ex.members.insert(host.to_string(), (now, have.clone()));
        let n = have.len();
        let fresh = |h: &str| {
            seen.get(h)
                .is_some_and(|t| now.duration_since(*t) < REPORT_TTL)
        };
        ex.members.retain(|h, (asked, holds)| {
            h == host
                || (fresh(h)
                    && (now.duration_since(*asked) < MEMBER_TTL || holds.iter().all(|x| *x)))
        });
        let relay_out = self.opts.nic.egress.rate().unwrap_or(DEFAULT_UP);
        let mut urls = Vec::new();
        let members: Vec<Member> = ex
            .members
            .iter()
            .map(|(h, (_, holds))| {
                let peer = reports.get(h).and_then(|r| r.peer.clone());
                let up = match &peer {
                    Some(p) if !ex.failed.contains_key(h) && fresh(h) => {
                        if p.up == 0 {
                            DEFAULT_UP
                        } else {
                            p.up
                        }
                    }
                    _ => 0,
                };
                let down = match &peer {
                    Some(p) if p.down > 0 => p.down,
                    _ => DEFAULT_UP,
                };
                urls.push(peer.map(|p| p.url));
                let mut holds = holds.clone();
                holds.resize(n, false);
                Member {
                    id: h.clone(),
                    holds,
                    up,
                    down,
                }
            })
            .collect();
        // The planner runs under the exchanges' lock only: reports and goal polls go on.
        drop((reports, seen));
        let problem = Problem {
            chunk_bytes: sizes,
            members,
            relay_out,
        }
        .without_slow_members();
        let Some(me) = problem.members.iter().position(|m| m.id == host) else {
            return ExchangePlan::default();
        };
        ex.plan = planner::plan(&problem, Some(&ex.plan));
        let chunks = planner::transfers_for(&problem, &ex.plan, me)
            .into_iter()
            .map(|t| {
                let peer = match t.from {
                    Source::Relay => None,
                    Source::Host(h) => urls
                        .get(h)
                        .cloned()
                        .flatten()
                        .zip(problem.members.get(h).map(|m| m.id.clone())),
                };
                PlannedChunk {
                    index: t.chunk,
                    from: peer.as_ref().map(|p| p.0.clone()),
                    host: peer.map(|p| p.1),
                }
            })
            .collect();
        ExchangePlan {
            peers: true,
            chunks,
            members: problem.members.len(),
        }
    }

    /// Forgets the exchanges of artifacts no longer pinned.
    pub(super) fn prune_exchanges(&self) {
        let pinned = self.pinned();
        lock(&self.exchanges).retain(|d, _| pinned.contains(d));
    }
}

/// A host's part of an artifact's exchange (`GET /v1/exchange/{digest}?host=H&have=BITS`).
pub(super) async fn plan(
    State(me): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(raw): Path<String>,
    Query(q): Query<PlanQuery>,
) -> Response {
    if let Some(refused) = not_for(&me, &peer, &q.host) {
        return refused;
    }
    if !me.opts.hosts.contains(&q.host) {
        return not_in_rack(&me, &q.host);
    }
    let digest = match serve::path_digest(&raw) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    if !me.opts.exchange {
        return Json(ExchangePlan::default()).into_response();
    }
    if !me.pinned().contains(&digest) {
        return text(
            StatusCode::NOT_FOUND,
            format!("artifact {digest} is not a goal of rack {}", me.opts.rack),
        );
    }
    let sizes: Vec<u64> = match me.manifest(&digest).await {
        Ok(m) => m.chunks.iter().map(|c| c.size).collect(),
        Err(e) => return text(StatusCode::BAD_GATEWAY, e),
    };
    let have = match parse_have(&q.have, sizes.len()) {
        Ok(h) => h,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    me.stats.exchange_asks.fetch_add(1, Ordering::Relaxed);
    Json(me.plan_for(digest, sizes, &q.host, have)).into_response()
}

/// What a host says of a peer that failed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trouble {
    pub host: String,
    pub peer: String,
    /// It served bytes that did not match their digest (else: unreachable, or too slow).
    pub bad: bool,
}

/// A peer that failed a host (`POST /v1/exchange/{digest}/trouble`): it serves nobody for
/// the rest of this exchange; bad bytes are counted.
pub(super) async fn trouble(
    State(me): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_REPORT_BYTES {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "report too large");
    }
    let t: Trouble = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("not a trouble report: {e}"),
            )
        }
    };
    if let Some(refused) = not_for(&me, &peer, &t.host) {
        return refused;
    }
    for h in [&t.host, &t.peer] {
        if !me.opts.hosts.contains(h) {
            return not_in_rack(&me, h);
        }
    }
    let digest = match serve::path_digest(&raw) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    if !me.pinned().contains(&digest) {
        return text(
            StatusCode::NOT_FOUND,
            format!("artifact {digest} is not a goal of rack {}", me.opts.rack),
        );
    }
    let why = if t.bad {
        me.stats.bad_peers.fetch_add(1, Ordering::Relaxed);
        "served bad bytes"
    } else {
        me.stats.peer_failures.fetch_add(1, Ordering::Relaxed);
        "unreachable or too slow"
    };
    warn!(relay = %me.opts.id, host = %t.host, peer = %t.peer, artifact = %digest, why, "a peer serves nobody for the rest of this exchange");
    lock(&me.exchanges)
        .entry(digest)
        .or_default()
        .failed
        .insert(t.peer, format!("{why} (reported by {})", t.host));
    StatusCode::NO_CONTENT.into_response()
}

pub(super) fn not_in_rack(me: &Inner, host: &str) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "host {:?} is not in rack {}",
            host.chars().take(64).collect::<String>(),
            me.opts.rack
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn have_bits_round_trip_and_refuse_the_wrong_length() {
        let flags = [true, false, false, true, true, false, false, false, true];
        let hex = format_have(&flags);
        assert_eq!(hex, "9880");
        assert_eq!(parse_have(&hex, 9).unwrap(), flags);
        assert!(parse_have(&hex, 20).is_err());
        assert!(parse_have("zz", 3).is_err());
        assert_eq!(parse_have("", 3).unwrap(), [false; 3]);
    }

    #[test]
    fn a_peer_url_is_a_host_and_port_only() {
        let ok = |u: &str| {
            PeerInfo {
                url: u.into(),
                up: 0,
                down: 0,
            }
            .check()
        };
        assert!(ok("http://127.0.0.1:7400").is_ok());
        assert!(ok("https://[::1]:7400").is_ok());
        assert!(ok("ftp://x:1").is_err());
        assert!(ok("http://x:1/../a").is_err());
        assert!(ok("http://x").is_err());
        assert!(ok(&format!("http://{}:1", "a".repeat(300))).is_err());
    }
}
