//! The rack relay: goals, reports, manifests and chunks for the hosts of one rack.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use deploy_artifact::{Manifest, TrustedKeys};
use deploy_client::Client;
use deploy_proto::v1 as pb;
use deploy_types::Digest;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use deploy_tls::listener::Peer;

use crate::bucket::{Bucket, Nic};
use crate::cache::Cache;
use crate::fetch;

/// Longest goal poll.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Largest report body.
const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Pieces a chunk is forwarded in.
const PIECE: usize = 64 * 1024;
const REPORT_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub id: String,
    pub region: String,
    pub rack: String,
    pub hosts: Vec<String>,
    /// The region's nodes (`host:port`): the watch, reports, and the store over HTTP.
    pub coordinators: Vec<String>,
    /// A relay one level up (`host:port`) to fetch from before the store.
    pub parent: Option<String>,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// Bytes per second fetched from upstream, and served on each host's link; `None`:
    /// unlimited.
    pub up_limit: Option<u64>,
    pub down_limit: Option<u64>,
    /// The relay's network card: every fetch draws from its ingress and every answer (to
    /// hosts and child relays) from its egress, under the per-connection limits above.
    pub nic: Nic,
    pub trusted: TrustedKeys,
    pub max_chunk_bytes: usize,
    /// Plain TCP, or mutual TLS: then only the cluster's processes may connect.
    pub transport: deploy_tls::Transport,
}

/// What a host is told to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostGoal {
    pub service: String,
    pub build_id: String,
    pub artifact_digest: Digest,
    pub release: String,
}

impl HostGoal {
    /// The goal a region's reply names, parsed once; a malformed digest is refused.
    pub fn from_proto(g: pb::ServiceGoal) -> Result<Self, deploy_types::DigestError> {
        Ok(Self {
            artifact_digest: Digest::parse(&g.artifact_digest)?,
            service: g.service,
            build_id: g.build_id,
            release: g.release,
        })
    }

    /// The goals of a reply, without (and warning of) any that does not parse.
    pub fn all_from_proto(goals: Vec<pb::ServiceGoal>) -> Vec<RackGoal> {
        goals
            .into_iter()
            .filter_map(|g| {
                let max_unavailable_per_rack = g.max_unavailable_per_rack;
                match Self::from_proto(g) {
                    Ok(goal) => Some(RackGoal {
                        goal,
                        max_unavailable_per_rack,
                    }),
                    Err(e) => {
                        warn!(error = %e, "a goal from the region is malformed; ignored");
                        None
                    }
                }
            })
            .collect()
    }
}

/// A goal as a relay holds it: what the host is told, and how many of the rack may take it
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackGoal {
    pub goal: HostGoal,
    pub max_unavailable_per_rack: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GoalReply {
    pub version: u64,
    /// What the host may act on now (a new build waits its turn in the rack).
    pub goals: Vec<HostGoal>,
    pub report_every_ms: u64,
    /// The region's goals for this host are known (heard from its leader, the host
    /// registered there): then a service not in `services` is one the host must stop.
    #[serde(default)]
    pub known: bool,
    /// Every service the region wants on this host, whether or not its turn has come.
    #[serde(default)]
    pub services: Vec<String>,
}

/// A host's state per service, as its agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    pub host: String,
    pub services: Vec<ServiceState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub service: String,
    pub build_id: String,
    /// By its name in JSON (`HEALTHY`).
    #[serde(with = "deploy_proto::names::service_state::typed")]
    pub state: pb::ServiceState,
    pub detail: String,
}

impl AgentReport {
    /// The report as the region's API carries it.
    pub fn to_proto(&self) -> pb::HostReport {
        pb::HostReport {
            host: self.host.clone(),
            services: self
                .services
                .iter()
                .map(|s| pb::ServiceReport {
                    service: s.service.clone(),
                    build_id: s.build_id.clone(),
                    state: s.state as i32,
                    detail: s.detail.clone(),
                })
                .collect(),
        }
    }
}

/// Counters, for tests and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub chunk_requests: AtomicU64,
    pub cache_hits: AtomicU64,
    pub upstream_fetches: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub bytes_served: AtomicU64,
    /// Rack reports the region's leader took (one every `REPORT_EVERY` while it answers).
    pub rack_reports: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Receiving(usize),
    Done(usize),
    Failed,
}

/// A chunk being fetched: its bytes so far, which readers forward as they arrive.
struct Inflight {
    data: Mutex<BytesMut>,
    progress: watch::Sender<Progress>,
}

struct Inner {
    opts: RelayOptions,
    http: reqwest::Client,
    client: Client,
    cache: Cache,
    up: Bucket,
    /// Goals per host, from the regional leader.
    goals: Mutex<BTreeMap<String, Vec<RackGoal>>>,
    /// The rack's hosts the region has registered (their goals are complete).
    registered: Mutex<BTreeSet<String>>,
    reports: Mutex<BTreeMap<String, AgentReport>>,
    /// The build each (host, service) was last handed, for max-unavailable gating: only
    /// pairs the rack's goals name (pruned with each new set of goals).
    handed: Mutex<HashMap<(String, String), String>>,
    version: watch::Sender<u64>,
    inflight: Mutex<HashMap<Digest, Arc<Inflight>>>,
    /// The manifests of pinned artifacts only (at most two per service of the rack's goals).
    manifests: Mutex<HashMap<Digest, Manifest>>,
    /// Per service of the rack's goals: the artifact digests of its live and previous goals.
    pins: Mutex<BTreeMap<String, Vec<Digest>>>,
    stats: Stats,
    /// Whether the rack's goals have been heard from the region at least once.
    heard: std::sync::atomic::AtomicBool,
}

/// A running relay (cheap to clone).
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot open the cache in {dir}: {source}")]
    Cache { dir: String, source: std::io::Error },
    #[error(transparent)]
    Client(#[from] deploy_client::ClientError),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relay {
    pub fn new(opts: RelayOptions) -> Result<Self, RelayError> {
        let cache = Cache::open(&opts.cache_dir, opts.cache_max_bytes).map_err(|source| {
            RelayError::Cache {
                dir: opts.cache_dir.display().to_string(),
                source,
            }
        })?;
        let client = match &opts.transport {
            deploy_tls::Transport::Plain => Client::new(&opts.coordinators)?,
            deploy_tls::Transport::Tls(m) => Client::secure(&opts.coordinators, m.tonic_client())?,
        }
        .with_timeout(Duration::from_secs(5));
        Ok(Self {
            inner: Arc::new(Inner {
                http: fetch::client(&opts.transport),
                client,
                cache,
                up: opts.nic.receiving(opts.up_limit),
                goals: Mutex::default(),
                registered: Mutex::default(),
                reports: Mutex::default(),
                handed: Mutex::default(),
                version: watch::channel(1).0,
                inflight: Mutex::default(),
                manifests: Mutex::default(),
                pins: Mutex::default(),
                stats: Stats::default(),
                heard: Default::default(),
                opts,
            }),
        })
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// The HTTP routes hosts use.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/v1/goal", get(goal))
            .route("/v1/report", post(report))
            .route("/v1/manifests/{digest}", get(manifest))
            .route("/v1/chunks/{digest}", get(chunk))
            .with_state(self.inner.clone())
    }

    /// Serves hosts on `listener` and keeps the watch and the reports going until `stop`.
    pub async fn run(self, listener: tokio::net::TcpListener, stop: CancellationToken) {
        info!(relay = %self.inner.opts.id, rack = %self.inner.opts.rack, addr = ?listener.local_addr().ok(), "relay serving");
        tokio::spawn(watch_goals(self.inner.clone(), stop.clone()));
        tokio::spawn(send_reports(self.inner.clone(), stop.clone()));
        let app = self.router();
        let served = match &self.inner.opts.transport {
            deploy_tls::Transport::Plain => {
                axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
            deploy_tls::Transport::Tls(m) => {
                // Only the cluster's processes talk to a relay: its hosts and child relays.
                let tls = m.server_config(true).and_then(|config| {
                    deploy_tls::listener::AxumListener::new(
                        listener,
                        config,
                        format!("relay {}", self.inner.opts.id),
                        Default::default(),
                    )
                    .map_err(|e| deploy_tls::TlsError::Invalid(e.to_string()))
                });
                match tls {
                    Ok(l) => {
                        axum::serve(l, app.into_make_service_with_connect_info::<Peer>())
                            .with_graceful_shutdown(async move { stop.cancelled().await })
                            .await
                    }
                    Err(e) => {
                        warn!(error = %e, "relay cannot serve TLS");
                        return;
                    }
                }
            }
        };
        if let Err(e) = served {
            warn!(error = %e, "relay server ended");
        }
    }
}

impl Inner {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// The sources to fetch from: the parent relay, then the region's nodes (its store).
    fn upstreams(&self) -> Vec<String> {
        self.opts
            .parent
            .iter()
            .chain(self.opts.coordinators.iter())
            .map(|a| fetch::base(a))
            .collect()
    }

    /// Replaces the rack's goals; pins the chunks of live and previous builds, and forgets
    /// what no goal names any more (handed builds, pins and manifests of other services).
    fn set_goals(self: &Arc<Self>, reply: &pb::ReportRackReply) {
        self.heard.store(true, Ordering::Relaxed);
        *lock(&self.registered) = reply
            .hosts
            .iter()
            .filter(|h| h.registered && self.opts.hosts.contains(&h.host))
            .map(|h| h.host.clone())
            .collect();
        let new: BTreeMap<String, Vec<RackGoal>> = reply
            .hosts
            .iter()
            .filter(|h| self.opts.hosts.contains(&h.host))
            .map(|h| (h.host.clone(), HostGoal::all_from_proto(h.goals.clone())))
            .collect();
        let changed = {
            let mut g = lock(&self.goals);
            let changed = *g != new;
            *g = new.clone();
            changed
        };
        if !changed {
            return;
        }
        self.bump();
        lock(&self.handed).retain(|(host, service), _| {
            new.get(host)
                .is_some_and(|gs| gs.iter().any(|g| g.goal.service == *service))
        });
        let mut newly = Vec::new();
        {
            let mut pins = lock(&self.pins);
            let services: BTreeSet<&str> = new
                .values()
                .flatten()
                .map(|g| g.goal.service.as_str())
                .collect();
            pins.retain(|s, _| services.contains(s.as_str()));
            for RackGoal { goal, .. } in new.values().flatten() {
                let list = pins.entry(goal.service.clone()).or_default();
                if list.first() != Some(&goal.artifact_digest) {
                    list.retain(|d| *d != goal.artifact_digest);
                    list.insert(0, goal.artifact_digest);
                    list.truncate(2);
                    newly.push(goal.artifact_digest);
                }
            }
        }
        self.repin();
        // Learn the new manifests now, so their chunks are pinned before hosts ask.
        for digest in newly {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.manifest(&digest).await;
                me.repin();
            });
        }
    }

    fn pinned(&self) -> BTreeSet<Digest> {
        lock(&self.pins).values().flatten().copied().collect()
    }

    /// Pins the chunks of the pinned artifacts, and drops every other manifest.
    fn repin(&self) {
        let pinned = self.pinned();
        let mut manifests = lock(&self.manifests);
        manifests.retain(|d, _| pinned.contains(d));
        let chunks: BTreeSet<Digest> = manifests
            .values()
            .flat_map(|m| m.chunks.iter().map(|c| c.digest))
            .collect();
        self.cache.pin(chunks);
    }

    /// A verified manifest: from memory if it is pinned, else from upstream (kept only if
    /// pinned, so what a host asks for cannot grow the map).
    async fn manifest(&self, digest: &Digest) -> Result<Manifest, String> {
        if let Some(m) = lock(&self.manifests).get(digest) {
            return Ok(m.clone());
        }
        let m = fetch::manifest(&self.http, &self.upstreams(), digest, &self.opts.trusted)
            .await
            .map_err(|e| e.to_string())?;
        if self.pinned().contains(digest) {
            lock(&self.manifests).insert(*digest, m.clone());
        }
        Ok(m)
    }

    /// The goals a host may act on now: a new build is handed to at most
    /// `max_unavailable_per_rack` hosts of the rack at a time, until they report it healthy.
    fn goals_for(&self, host: &str) -> Vec<HostGoal> {
        let goals = lock(&self.goals).get(host).cloned().unwrap_or_default();
        let reports = lock(&self.reports);
        let mut handed = lock(&self.handed);
        let running = |h: &str, s: &str| {
            reports
                .get(h)
                .and_then(|r| r.services.iter().find(|x| x.service == s))
                .cloned()
        };
        let mut out = Vec::new();
        for RackGoal {
            goal: g,
            max_unavailable_per_rack,
        } in goals
        {
            let mine = running(host, &g.service);
            let allowed = mine.as_ref().is_some_and(|m| m.build_id == g.build_id)
                || handed.get(&(host.to_string(), g.service.clone())) == Some(&g.build_id)
                || {
                    let busy = self
                        .opts
                        .hosts
                        .iter()
                        .filter(|h| h.as_str() != host)
                        .filter(|h| {
                            handed.get(&((*h).clone(), g.service.clone())) == Some(&g.build_id)
                                && !running(h, &g.service).is_some_and(|r| {
                                    r.build_id == g.build_id && r.state == pb::ServiceState::Healthy
                                })
                        })
                        .count();
                    busy < max_unavailable_per_rack.max(1) as usize
                };
            if allowed {
                handed.insert((host.to_string(), g.service.clone()), g.build_id.clone());
                out.push(g);
            }
        }
        out
    }

    /// The in-flight fetch of a chunk, started if none is; `None` if the chunk is cached
    /// (checked under the same lock the fetch leaves by, after caching: no second fetch).
    fn fetching(self: &Arc<Self>, digest: &Digest) -> Option<Arc<Inflight>> {
        let mut map = lock(&self.inflight);
        if let Some(f) = map.get(digest) {
            return Some(f.clone());
        }
        if self.cache.contains(digest) {
            return None;
        }
        let f = Arc::new(Inflight {
            data: Mutex::new(BytesMut::new()),
            progress: watch::channel(Progress::Receiving(0)).0,
        });
        map.insert(*digest, f.clone());
        let me = self.clone();
        let digest = *digest;
        let job = f.clone();
        tokio::spawn(async move {
            me.stats.upstream_fetches.fetch_add(1, Ordering::Relaxed);
            let outcome = me.fetch_into(&digest, &job).await;
            match outcome {
                Ok(bytes) => {
                    if let Err(e) = me.cache.insert(&digest, &bytes).await {
                        warn!(chunk = %digest, error = %e, "cannot cache a chunk");
                    }
                    job.progress.send_replace(Progress::Done(bytes.len()));
                }
                Err(e) => {
                    warn!(chunk = %digest, error = %e, "chunk fetch failed");
                    job.progress.send_replace(Progress::Failed);
                }
            }
            lock(&me.inflight).remove(&digest);
        });
        Some(f)
    }

    /// Fetches a chunk from the first upstream that has it, appending to `job` as bytes
    /// arrive. A source that breaks off is resumed at the same offset from the next (the
    /// bytes are content-addressed, so any source's are the same). Verified at the end.
    async fn fetch_into(&self, digest: &Digest, job: &Inflight) -> Result<Bytes, String> {
        let mut hasher = Sha256::new();
        let mut errors = Vec::new();
        let hex = digest.hex();
        for src in self.upstreams() {
            let offset = lock(&job.data).len();
            let mut req = self.http.get(format!("{src}/v1/chunks/{hex}"));
            if offset > 0 {
                req = req.header(header::RANGE, format!("bytes={offset}-"));
            }
            let resp = match req.send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    errors.push(format!("{src}: {}", r.status()));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("{src}: {e}"));
                    continue;
                }
            };
            if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                errors.push(format!("{src}: no range support"));
                continue;
            }
            let mut body = resp.bytes_stream();
            let mut broke = None;
            while let Some(part) = body.next().await {
                let part = match part {
                    Ok(p) => p,
                    Err(e) => {
                        broke = Some(e.to_string());
                        break;
                    }
                };
                self.up.take(part.len()).await;
                hasher.update(&part);
                let len = {
                    let mut d = lock(&job.data);
                    if d.len() + part.len() > self.opts.max_chunk_bytes {
                        return Err(format!(
                            "{src}: chunk larger than {} bytes",
                            self.opts.max_chunk_bytes
                        ));
                    }
                    d.extend_from_slice(&part);
                    d.len()
                };
                self.stats
                    .bytes_fetched
                    .fetch_add(part.len() as u64, Ordering::Relaxed);
                job.progress.send_replace(Progress::Receiving(len));
            }
            match broke {
                Some(e) => errors.push(format!("{src}: broke off: {e}")),
                None => {
                    let got = Digest::from_bytes(hasher.finalize().into());
                    if got != *digest {
                        return Err(format!("upstream bytes have digest {got}, not {digest}"));
                    }
                    return Ok(lock(&job.data).clone().freeze());
                }
            }
        }
        Err(format!(
            "no upstream served chunk {digest}: {}",
            errors.join("; ")
        ))
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, format!("{}\n", msg.into())).into_response()
}

/// Ready once the rack's goals have been heard from the region.
async fn readyz(State(me): State<Arc<Inner>>) -> Response {
    if me.heard.load(Ordering::Relaxed) {
        text(StatusCode::OK, "ready")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the region has not been heard from yet",
        )
    }
}

/// The relay's counters, as Prometheus text.
async fn metrics(State(me): State<Arc<Inner>>) -> Response {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    let mut reg = prometheus_client::registry::Registry::default();
    let s = &me.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            "deploy_relay_chunk_requests",
            "Chunk requests from hosts",
            load(&s.chunk_requests),
        ),
        (
            "deploy_relay_cache_hits",
            "Chunk requests served from the cache",
            load(&s.cache_hits),
        ),
        (
            "deploy_relay_upstream_fetches",
            "Chunks fetched from the parent or the store",
            load(&s.upstream_fetches),
        ),
        (
            "deploy_relay_fetched_bytes",
            "Bytes fetched from upstream",
            load(&s.bytes_fetched),
        ),
        (
            "deploy_relay_served_bytes",
            "Bytes served to hosts",
            load(&s.bytes_served),
        ),
        (
            "deploy_relay_rack_reports",
            "Rack reports the region's leader took",
            load(&s.rack_reports),
        ),
    ] {
        let c: Counter = Counter::default();
        c.inc_by(v);
        reg.register(name, help, c);
    }
    let requests = load(&s.chunk_requests);
    let ratio: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64> =
        Default::default();
    ratio.set(if requests == 0 {
        0.0
    } else {
        load(&s.cache_hits) as f64 / requests as f64
    });
    reg.register(
        "deploy_relay_cache_hit_ratio",
        "Cache hits over chunk requests",
        ratio,
    );
    let cached: Gauge = Gauge::default();
    cached.set(me.cache.total_bytes() as i64);
    reg.register(
        "deploy_relay_cache_bytes",
        "Bytes in the chunk cache",
        cached,
    );
    let hosts: Gauge = Gauge::default();
    hosts.set(lock(&me.reports).len() as i64);
    reg.register(
        "deploy_relay_reporting_hosts",
        "Hosts that have reported",
        hosts,
    );
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

#[derive(Deserialize)]
struct GoalQuery {
    host: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    wait_ms: u64,
}

/// On a secure relay a host reads and reports only for itself: the certificate it connected
/// with must name `host`; otherwise the refusal to answer. (Child relays and nodes fetch
/// manifests and chunks, never goals.)
fn not_for(me: &Inner, peer: &Peer, host: &str) -> Option<Response> {
    if !me.opts.transport.is_tls() || peer.id.as_deref() == Some(host) {
        return None;
    }
    let shown: String = host.chars().take(64).collect();
    Some(text(
        StatusCode::FORBIDDEN,
        match &peer.id {
            Some(id) => format!("{id} may not speak for host {shown:?}: a host reads its own goals and reports only for itself"),
            None => "a host call needs the host's certificate".to_string(),
        },
    ))
}

async fn goal(
    State(me): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(q): Query<GoalQuery>,
) -> Response {
    if let Some(refused) = not_for(&me, &peer, &q.host) {
        return refused;
    }
    if !me.opts.hosts.contains(&q.host) {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "host {:?} is not in rack {}",
                q.host.chars().take(64).collect::<String>(),
                me.opts.rack
            ),
        );
    }
    let mut rx = me.version.subscribe();
    let wait = Duration::from_millis(q.wait_ms.min(MAX_WAIT_MS));
    let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v > q.version)).await;
    let version = *me.version.borrow();
    let known = me.heard.load(Ordering::Relaxed) && lock(&me.registered).contains(&q.host);
    let services = lock(&me.goals)
        .get(&q.host)
        .map(|g| g.iter().map(|x| x.goal.service.clone()).collect())
        .unwrap_or_default();
    Json(GoalReply {
        version,
        goals: me.goals_for(&q.host),
        report_every_ms: REPORT_EVERY.as_millis() as u64,
        known,
        services,
    })
    .into_response()
}

async fn report(
    State(me): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_REPORT_BYTES {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "report too large");
    }
    let r: AgentReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("not a report: {e}")),
    };
    if let Some(refused) = not_for(&me, &peer, &r.host) {
        return refused;
    }
    if !me.opts.hosts.contains(&r.host) {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "host {:?} is not in rack {}",
                r.host.chars().take(64).collect::<String>(),
                me.opts.rack
            ),
        );
    }
    let changed = {
        let mut reports = lock(&me.reports);
        let changed = reports.get(&r.host) != Some(&r);
        reports.insert(r.host.clone(), r);
        changed
    };
    if changed {
        // A host that became healthy may free a slot for the next.
        me.bump();
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn manifest(State(me): State<Arc<Inner>>, Path(raw): Path<String>) -> Response {
    let digest = match Digest::parse_either(&raw) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match me.manifest(&digest).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => text(StatusCode::BAD_GATEWAY, e),
    }
}

async fn chunk(
    State(me): State<Arc<Inner>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let digest = match Digest::parse_either(&raw) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    me.stats.chunk_requests.fetch_add(1, Ordering::Relaxed);
    let ranged = headers.get(header::RANGE).is_some();
    let mut cached = None;
    // Twice at most: a cached file found not to match its digest is removed, and fetched
    // once more.
    for _ in 0..2 {
        match me.fetching(&digest) {
            Some(job) => {
                if !ranged {
                    // Bytes are passed on as they arrive, but not before the first: a chunk
                    // no source has is a clear 502, not a 200 whose body breaks off.
                    let mut rx = job.progress.subscribe();
                    let _ = rx.wait_for(|p| !matches!(p, Progress::Receiving(0))).await;
                    let failed = matches!(*rx.borrow(), Progress::Failed);
                    if failed {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            format!("chunk {digest} could not be fetched from any source"),
                        );
                    }
                    return Body::from_stream(forward(me.clone(), job)).into_response();
                }
                // A range of a chunk still arriving is served once it is whole.
                let mut rx = job.progress.subscribe();
                let _ = rx.wait_for(|p| !matches!(p, Progress::Receiving(_))).await;
            }
            None => {
                me.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            }
        }
        match me.cache.read(&digest).await {
            Ok(Some(d)) => {
                cached = Some(d);
                break;
            }
            Ok(None) => continue,
            Err(e) => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cache read failed: {e}"),
                )
            }
        }
    }
    let Some(data) = cached else {
        return text(
            StatusCode::BAD_GATEWAY,
            format!("chunk {digest} could not be fetched"),
        );
    };
    let len = data.len() as u64;
    let (status, body, range) = match headers.get(header::RANGE) {
        None => (StatusCode::OK, data, None),
        Some(r) => match r
            .to_str()
            .ok()
            .and_then(|r| deploy_artifact::parse_range(r, len))
        {
            Some((s, e)) => (
                StatusCode::PARTIAL_CONTENT,
                data.slice(s as usize..e as usize),
                Some((s, e)),
            ),
            None => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                    "unsatisfiable range\n",
                )
                    .into_response()
            }
        },
    };
    let mut resp = Body::from_stream(paced(me, body)).into_response();
    *resp.status_mut() = status;
    if let Some((s, e)) = range {
        if let Ok(v) = format!("bytes {s}-{}/{len}", e - 1).parse() {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// A whole body sent in pieces within the limit of the host's link.
fn paced(
    me: Arc<Inner>,
    body: Bytes,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let link = me.opts.nic.sending(me.opts.down_limit);
    futures::stream::unfold(
        (me, body, 0usize, link),
        |(me, body, pos, link)| async move {
            if pos >= body.len() {
                return None;
            }
            let end = (pos + PIECE).min(body.len());
            link.take(end - pos).await;
            me.stats
                .bytes_served
                .fetch_add((end - pos) as u64, Ordering::Relaxed);
            Some((Ok(body.slice(pos..end)), (me, body, end, link)))
        },
    )
}

struct Forwarding {
    me: Arc<Inner>,
    job: Arc<Inflight>,
    rx: watch::Receiver<Progress>,
    pos: usize,
    ended: bool,
    link: Bucket,
}

/// The bytes of an in-flight chunk, forwarded as they arrive within the limit of the host's
/// link; an error (the body breaks off) if the fetch fails or the bytes do not match.
fn forward(
    me: Arc<Inner>,
    job: Arc<Inflight>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let st = Forwarding {
        rx: job.progress.subscribe(),
        link: me.opts.nic.sending(me.opts.down_limit),
        me,
        job,
        pos: 0,
        ended: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.ended {
            return None;
        }
        loop {
            let progress = *st.rx.borrow_and_update();
            let piece = {
                let d = lock(&st.job.data);
                (st.pos < d.len())
                    .then(|| Bytes::copy_from_slice(&d[st.pos..d.len().min(st.pos + PIECE)]))
            };
            if let Some(piece) = piece {
                st.link.take(piece.len()).await;
                st.me
                    .stats
                    .bytes_served
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
                st.pos += piece.len();
                return Some((Ok(piece), st));
            }
            match progress {
                Progress::Done(_) => return None,
                Progress::Failed => {
                    st.ended = true;
                    let e = std::io::Error::other(
                        "the chunk could not be fetched or failed verification",
                    );
                    return Some((Err(e), st));
                }
                Progress::Receiving(_) => {
                    if st.rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        }
    })
}

/// Keeps a watch on the rack's goals open to the regional leader, through any region node.
async fn watch_goals(me: Arc<Inner>, stop: CancellationToken) {
    let req = pb::WatchRackRequest {
        region: me.opts.region.clone(),
        rack: me.opts.rack.clone(),
        hosts: me.opts.hosts.clone(),
    };
    while !stop.is_cancelled() {
        match me.client.watch_rack(req.clone()).await {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    m = tokio::time::timeout(Duration::from_secs(10), stream.message()) => m,
                    _ = stop.cancelled() => return,
                };
                match next {
                    Ok(Ok(Some(reply))) => me.set_goals(&reply),
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        debug!(error = %e.message(), "goal watch ended; watching again");
                        break;
                    }
                    Err(_) => {
                        debug!("goal watch silent; watching again");
                        break;
                    }
                }
            },
            Err(e) => debug!(error = %e, "cannot watch the rack's goals yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Sends the rack's reports to the regional leader (which also answers with the goals).
async fn send_reports(me: Arc<Inner>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let hosts: Vec<pb::HostReport> = {
            let reports = lock(&me.reports);
            me.opts
                .hosts
                .iter()
                .map(|h| match reports.get(h) {
                    Some(r) => r.to_proto(),
                    None => pb::HostReport {
                        host: h.clone(),
                        services: Vec::new(),
                    },
                })
                .collect()
        };
        let req = pb::ReportRackRequest {
            region: me.opts.region.clone(),
            rack: me.opts.rack.clone(),
            hosts,
            relay: me.opts.id.clone(),
        };
        match me.client.report_rack(req).await {
            Ok(reply) => {
                me.stats.rack_reports.fetch_add(1, Ordering::Relaxed);
                me.set_goals(&reply)
            }
            Err(e) => debug!(error = %e, "rack report not delivered"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REPORT_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
