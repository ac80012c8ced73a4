//! The host's side of the intra-rack exchange.
//!
//! - Its chunk server: the verified chunks under `chunks/` for the hosts and relays of its
//!   rack (on a secure cluster only they may connect: their certificates name them), paced
//!   by the host's upload share within its NIC's egress. A chunk not held yet is waited for
//!   a while (its owner is likely still receiving it), so a peer can ask ahead.
//! - Fetching through the exchange: the rack's relay says where each missing chunk comes
//!   from ([`crate::relay::exchange`]); a few chunks move at once. A peer that fails (down,
//!   past the deadline, or bad bytes) is reported to the relay and skipped for the rest of
//!   the install, and the chunk comes from the relays, then the store, as without the
//!   exchange. Every chunk is verified before it is written, and so before it is served on.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use deploy_artifact::serve::{self, text};
use deploy_tls::listener::Peer;
use tokio::task::JoinSet;

use super::*;
use crate::relay::exchange::{format_have, ExchangePlan, PeerInfo, PlannedChunk, Trouble};

/// The file under the agent's root that says where its chunk server is.
pub const PEER_ADDR_FILE: &str = "peer.addr";
/// Chunks fetched at once through the exchange: one per host taking part (a peer's upload is
/// shared by every host fetching from it, so a host needs about as many fetches as peers to
/// fill its own NIC), within these bounds (each holds up to a chunk in memory).
const MIN_WINDOW: usize = 4;
const MAX_WINDOW: usize = 32;
/// Chunks taken from one plan.
const TAKEN: usize = 2 * MAX_WINDOW;
/// Chunks from the relay in flight or taken from a plan, at most: the planner keeps as many
/// of an owner's next chunks its own, and shares the rest anew among the hosts that ask
/// meanwhile (the first host to ask would otherwise own the whole artifact).
const RELAY_AHEAD: usize = crate::exchange::KEPT_AHEAD;
/// How often a host asks its relay for a fresh plan while it fetches (new holders, failed
/// peers, hosts that joined).
const REPLAN_EVERY: Duration = Duration::from_secs(1);
/// How long the chunk server waits for a chunk it does not hold yet.
const HOLD_WAIT: Duration = Duration::from_secs(8);
/// How long a fetch from a peer may take before the peer counts as too slow: at least the
/// chunk server's wait for a chunk its owner is still receiving (a round of a large rack's
/// relay takes seconds), and four times the median of the agent's own chunk times once it
/// has four, up to twice that.
const MIN_DEADLINE: Duration = Duration::from_secs(10);
const MAX_DEADLINE: Duration = Duration::from_secs(20);
/// Chunk times kept for the deadline.
const TIMES_KEPT: usize = 32;

/// The exchange's share of an agent: its peer address, what it holds, and its counters.
#[derive(Debug)]
pub struct PeerState {
    /// Where peers reach its chunk server, once it serves.
    url: Mutex<Option<String>>,
    /// Bumped whenever a chunk is written: the chunk server's waiters look again.
    written: tokio::sync::watch::Sender<u64>,
    /// The host's upload share toward its peers, within its NIC's egress.
    upload: Bucket,
    times: Mutex<VecDeque<Duration>>,
    pub served_bytes: std::sync::atomic::AtomicU64,
    pub chunks_from_peers: std::sync::atomic::AtomicU64,
    pub chunks_from_relays: std::sync::atomic::AtomicU64,
    pub peer_troubles: std::sync::atomic::AtomicU64,
}

impl PeerState {
    pub(super) fn new(opts: &AgentOptions) -> Self {
        Self {
            url: Mutex::default(),
            written: tokio::sync::watch::channel(0).0,
            upload: opts.nic.sending(opts.peer_upload),
            times: Mutex::default(),
            served_bytes: Default::default(),
            chunks_from_peers: Default::default(),
            chunks_from_relays: Default::default(),
            peer_troubles: Default::default(),
        }
    }

    fn deadline(&self) -> Duration {
        let times = lock(&self.times);
        if times.len() < 4 {
            return MIN_DEADLINE;
        }
        let mut sorted: Vec<Duration> = times.iter().copied().collect();
        sorted.sort();
        (sorted[sorted.len() / 2] * 4).clamp(MIN_DEADLINE, MAX_DEADLINE)
    }

    fn timed(&self, took: Duration) {
        let mut times = lock(&self.times);
        if times.len() == TIMES_KEPT {
            times.pop_front();
        }
        times.push_back(took);
    }
}

/// Why a fetch from a peer failed.
enum PeerFailure {
    /// Bytes that did not match their digest.
    Bad(String),
    /// Down, refused, or too slow.
    Failed(String),
}

impl Agent {
    /// What the agent states of its chunk server in its reports: where it is, and what it
    /// may upload (its upload share, or its NIC's egress, whichever is less; 0: unlimited).
    pub(super) fn peer_info(&self) -> Option<PeerInfo> {
        let up = [self.opts.peer_upload, self.opts.nic.egress.rate()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        let down = self.opts.nic.ingress.rate().unwrap_or(0);
        lock(&self.peers.url)
            .clone()
            .map(|url| PeerInfo { url, up, down })
    }

    /// Binds and runs the chunk server when the options name an address for it.
    pub(super) async fn serve_peers(self: &Arc<Self>, stop: CancellationToken) {
        let Some(listen) = self.opts.peer_listen.clone() else {
            return;
        };
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                warn!(host = %self.opts.id, %listen, error = %e, "cannot serve peers: the exchange goes on without this host's uploads");
                return;
            }
        };
        let local: Option<SocketAddr> = listener.local_addr().ok();
        let advertised = match (&self.opts.peer_advertise, local) {
            (Some(a), _) => a.clone(),
            (None, Some(l)) => l.to_string(),
            (None, None) => return,
        };
        *lock(&self.peers.url) = Some(self.opts.transport.url(&advertised));
        self.changed.notify_one();
        // Where it serves, for operators and tests (a port 0 listener's port is known only
        // now).
        let _ = std::fs::create_dir_all(&self.opts.root);
        let _ = std::fs::write(
            self.opts.root.join(PEER_ADDR_FILE),
            format!("{advertised}\n"),
        );
        info!(host = %self.opts.id, addr = %advertised, "serving chunks to the rack's peers");
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/v1/chunks/{digest}", get(chunk))
            .with_state(self.clone());
        let what = format!("host {} chunks", self.opts.id);
        if let Err(e) = crate::serving::serve(listener, &self.opts.transport, what, app, stop).await
        {
            warn!(host = %self.opts.id, error = %e, "the chunk server ended");
        }
    }

    /// Writes a verified chunk to `path` under `chunks/` durably (off the runtime), then
    /// tells the chunk server's waiters to look again.
    pub(super) async fn keep_chunk(
        &self,
        path: &std::path::Path,
        data: Bytes,
    ) -> Result<(), String> {
        let to = path.to_path_buf();
        tokio::task::spawn_blocking(move || write_durably(&to, &data))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.peers.written.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The relays of the host's own rack, which keep its exchange.
    fn rack_relays(&self) -> Vec<String> {
        let n = self.opts.rack_relays.min(self.opts.relays.len());
        self.opts.relays[..n]
            .iter()
            .map(|a| fetch::base(a))
            .collect()
    }

    /// The exchange's plan for `digest`, from the first relay of the rack that answers.
    async fn ask(&self, digest: &Digest, have: &[bool]) -> Result<(String, ExchangePlan), String> {
        let mut tried = Vec::new();
        for relay in self.rack_relays() {
            let url = format!(
                "{relay}/v1/exchange/{}?host={}&have={}",
                digest.hex(),
                self.opts.id,
                format_have(have)
            );
            match fetch::get_bounded(&self.http, &url, 4 * 1024 * 1024, None).await {
                Ok(body) => {
                    let plan: ExchangePlan = serde_json::from_slice(&body)
                        .map_err(|e| format!("bad exchange plan from {relay}: {e}"))?;
                    return Ok((relay, plan));
                }
                Err(e) => tried.push(format!("{relay}: {e}")),
            }
        }
        Err(format!(
            "no relay of the rack gave a plan: {}",
            tried.join("; ")
        ))
    }

    /// Tells `relay` that `peer` failed this host for `digest`.
    async fn report_trouble(&self, relay: &str, digest: &Digest, peer: &str, bad: bool) {
        self.peers.peer_troubles.fetch_add(1, Ordering::Relaxed);
        let body = Trouble {
            host: self.opts.id.clone(),
            peer: peer.to_string(),
            bad,
        };
        let sent = self
            .http
            .post(format!("{relay}/v1/exchange/{}/trouble", digest.hex()))
            .timeout(Duration::from_secs(3))
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .send()
            .await;
        if let Err(e) = sent {
            warn!(host = %self.opts.id, %peer, error = %e, "cannot report a failed peer");
        }
    }

    /// Fills `have` through the exchange as far as it goes; what is left comes from the
    /// relays and the store as without it. Gives up (leaving the rest to them) if no relay
    /// of the rack plans, or the region turned the exchange off.
    pub(super) async fn exchange(
        self: &Arc<Self>,
        m: &Manifest,
        paths: &[PathBuf],
        have: &mut [bool],
    ) {
        let digest = m.artifact_digest;
        let skip: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let mut busy = BTreeSet::new();
        let mut window = MIN_WINDOW;
        // The chunks in flight from the relay (the plan named no peer).
        let mut from_relay = BTreeSet::new();
        let mut running: JoinSet<(usize, Result<(), String>)> = JoinSet::new();
        let mut pending: VecDeque<PlannedChunk> = VecDeque::new();
        let mut relay = String::new();
        let mut asked = tokio::time::Instant::now();
        let mut stale = true;
        loop {
            let done = have.iter().all(|h| *h);
            // Asked again when the plan is used up, a while old, or a peer failed; and once
            // more when done, so the relay knows this host holds it all (a later wave takes
            // it from here).
            if done || stale || pending.is_empty() || asked.elapsed() >= REPLAN_EVERY {
                match self.ask(&digest, have).await {
                    Ok((r, plan)) if plan.peers && !done => {
                        relay = r;
                        window = plan.members.clamp(MIN_WINDOW, MAX_WINDOW);
                        // Only the head of it: the rest may be planned anew by then (hosts
                        // that joined take their share of what the first one was given).
                        let mut relay_slots = RELAY_AHEAD.saturating_sub(from_relay.len());
                        pending = plan
                            .chunks
                            .into_iter()
                            .filter(|p| !busy.contains(&p.index))
                            .take_while(|p| {
                                if p.from.is_some() {
                                    return true;
                                }
                                let take = relay_slots > 0;
                                relay_slots = relay_slots.saturating_sub(1);
                                take
                            })
                            .take(TAKEN)
                            .collect();
                    }
                    Ok(_) => break,
                    Err(e) => {
                        warn!(host = %self.opts.id, error = %e, "no exchange plan; taking the chunks from the relays");
                        break;
                    }
                }
                asked = tokio::time::Instant::now();
                stale = false;
            }
            while running.len() < window {
                let Some(p) = pending.pop_front() else { break };
                let (Some(c), Some(path)) = (m.chunks.get(p.index), paths.get(p.index)) else {
                    continue;
                };
                if have.get(p.index).copied().unwrap_or(true) || !busy.insert(p.index) {
                    continue;
                }
                if p.from.is_none() {
                    from_relay.insert(p.index);
                }
                let from = p.from.zip(p.host).filter(|(_, h)| !lock(&skip).contains(h));
                let (me, skip, relay) = (self.clone(), skip.clone(), relay.clone());
                let (digest_c, path) = (c.digest, path.clone());
                running.spawn(async move {
                    let r = me
                        .fetch_one(&digest, digest_c, &path, from, &relay, &skip)
                        .await;
                    (p.index, r)
                });
            }
            if running.is_empty() {
                if pending.is_empty() {
                    // The plan gave nothing new to start: the relays and the store take over.
                    break;
                }
                continue;
            }
            let joined = tokio::select! {
                j = running.join_next() => j,
                _ = tokio::time::sleep_until(asked + REPLAN_EVERY) => continue,
            };
            match joined {
                Some(Ok((i, Ok(())))) => {
                    busy.remove(&i);
                    from_relay.remove(&i);
                    if let Some(h) = have.get_mut(i) {
                        *h = true;
                    }
                }
                Some(Ok((i, Err(e)))) => {
                    busy.remove(&i);
                    from_relay.remove(&i);
                    stale = true;
                    warn!(host = %self.opts.id, error = %e, "chunk not fetched through the exchange");
                }
                Some(Err(e)) => {
                    stale = true;
                    warn!(host = %self.opts.id, error = %e, "a chunk fetch ended abnormally");
                }
                None => {}
            }
        }
        // Whatever is still running finishes (its chunk is written, or left to the caller).
        while let Some(joined) = running.join_next().await {
            if let Ok((i, Ok(()))) = joined {
                if let Some(h) = have.get_mut(i) {
                    *h = true;
                }
            }
        }
    }

    /// One chunk: from the peer the plan names (unless it failed this host before), else
    /// from the relays, then the store; verified, then written durably.
    async fn fetch_one(
        &self,
        artifact: &Digest,
        digest: Digest,
        path: &std::path::Path,
        from: Option<(String, String)>,
        relay: &str,
        skip: &Mutex<BTreeSet<String>>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let mut data = None;
        if let Some((url, host)) = from {
            match self.fetch_from_peer(&url, &digest).await {
                Ok(d) => {
                    self.peers.chunks_from_peers.fetch_add(1, Ordering::Relaxed);
                    data = Some(d);
                }
                Err(failure) => {
                    let (bad, why) = match failure {
                        PeerFailure::Bad(e) => (true, e),
                        PeerFailure::Failed(e) => (false, e),
                    };
                    warn!(host = %self.opts.id, peer = %host, chunk = %digest, bad, error = %why, "peer skipped for this install");
                    lock(skip).insert(host.clone());
                    self.report_trouble(relay, artifact, &host, bad).await;
                }
            }
        }
        let data = match data {
            Some(d) => d,
            None => {
                let d = fetch::chunk(
                    &self.http,
                    &self.sources(),
                    &digest,
                    self.opts.max_chunk_bytes,
                    &self.down,
                )
                .await
                .map_err(|e| e.to_string())?;
                self.peers
                    .chunks_from_relays
                    .fetch_add(1, Ordering::Relaxed);
                d
            }
        };
        self.peers.timed(started.elapsed());
        self.keep_chunk(path, data).await
    }

    /// A chunk from one peer within the deadline, verified.
    async fn fetch_from_peer(&self, base: &str, digest: &Digest) -> Result<Bytes, PeerFailure> {
        let url = format!("{base}/v1/chunks/{}", digest.hex());
        let deadline = self.peers.deadline();
        let got = tokio::time::timeout(
            deadline,
            fetch::get_bounded(
                &self.http,
                &url,
                self.opts.max_chunk_bytes,
                Some(&self.down),
            ),
        )
        .await;
        let body = match got {
            Err(_) => {
                return Err(PeerFailure::Failed(format!(
                    "no chunk within {} ms",
                    deadline.as_millis()
                )))
            }
            Ok(Err(e)) => return Err(PeerFailure::Failed(e)),
            Ok(Ok(b)) => b,
        };
        let got = Digest::of(&body);
        if got != *digest {
            return Err(PeerFailure::Bad(format!("served bytes with digest {got}")));
        }
        Ok(body)
    }
}

/// A verified chunk this host holds, for a host or relay of its rack (`GET
/// /v1/chunks/{digest}`); one still arriving is waited for a while.
async fn chunk(
    State(a): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(raw): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if a.opts.transport.is_tls()
        && !peer
            .id
            .as_ref()
            .is_some_and(|id| a.opts.peer_allowed.contains(id))
    {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "only the hosts and relays of rack {} may fetch chunks from this host",
                a.opts.rack
            ),
        );
    }
    let digest = match serve::path_digest(&raw) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let path = a.opts.root.join("chunks").join(digest.hex());
    let mut written = a.peers.written.subscribe();
    let until = tokio::time::Instant::now() + HOLD_WAIT;
    let data = loop {
        match tokio::fs::read(&path).await {
            Ok(d) => break Bytes::from(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tokio::time::timeout_at(until, written.changed())
                    .await
                    .is_err()
                {
                    return text(
                        StatusCode::NOT_FOUND,
                        format!("host {} does not hold chunk {digest}", a.opts.id),
                    );
                }
            }
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read chunk {digest}: {e}"),
                )
            }
        }
    };
    let data = if a.opts.failpoint.as_deref() == Some("corrupt-peer") {
        // Test hook: this host serves its peers bad bytes.
        let mut d = data.to_vec();
        if let Some(b) = d.first_mut() {
            *b ^= 0xff;
        }
        Bytes::from(d)
    } else {
        data
    };
    serve::chunk_answer(data, &headers, |part| Body::from_stream(upload(a, part)))
}

/// `body` in pieces, each waiting for the host's upload share.
fn upload(
    a: Arc<Agent>,
    body: Bytes,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    const PIECE: usize = 64 * 1024;
    futures::stream::unfold((a, body, 0usize), |(a, body, pos)| async move {
        if pos >= body.len() {
            return None;
        }
        let end = (pos + PIECE).min(body.len());
        a.peers.upload.take(end - pos).await;
        a.peers
            .served_bytes
            .fetch_add((end - pos) as u64, Ordering::Relaxed);
        Some((Ok(body.slice(pos..end)), (a, body, end)))
    })
}
