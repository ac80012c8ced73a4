//! The rack relay: goals, reports, manifests and chunks for the hosts of one rack.
//!
//! - here: its options, state and goal bookkeeping (pins, what each host was handed);
//! - `goals`: the goal and report types (re-exported here);
//! - `flight`: single-flight chunk fetching and paced forwarding;
//! - `http`: the HTTP handlers;
//! - `upstream`: the goal watch and rack reports toward the region;
//! - `exchange`: the intra-rack exchange (who takes which chunk from whom).

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
    /// Whether the rack's hosts share chunks (the region's `peer_exchange`).
    pub exchange: bool,
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
    /// Exchange plans asked for by the rack's hosts.
    pub exchange_asks: AtomicU64,
    /// Peers reported for serving bytes that did not match their digest.
    pub bad_peers: AtomicU64,
    /// Peers reported unreachable or too slow.
    pub peer_failures: AtomicU64,
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
    /// When each host of the rack last reported (a host silent for long is taken for dead).
    seen: Mutex<HashMap<String, std::time::Instant>>,
    /// The intra-rack exchange of each pinned artifact.
    exchanges: Mutex<HashMap<Digest, exchange::Exchange>>,
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
                seen: Mutex::default(),
                exchanges: Mutex::default(),
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
            .route("/v1/exchange/{digest}", get(exchange::plan))
            .route("/v1/exchange/{digest}/trouble", post(exchange::trouble))
            .with_state(self.inner.clone())
    }

    /// Serves hosts on `listener` and keeps the watch and the reports going until `stop`.
    pub async fn run(self, listener: tokio::net::TcpListener, stop: CancellationToken) {
        info!(relay = %self.inner.opts.id, rack = %self.inner.opts.rack, addr = ?listener.local_addr().ok(), "relay serving");
        tokio::spawn(watch_goals(self.inner.clone(), stop.clone()));
        tokio::spawn(send_reports(self.inner.clone(), stop.clone()));
        let app = self.router();
        // Only the cluster's processes talk to a relay: its hosts and child relays.
        let what = format!("relay {}", self.inner.opts.id);
        let transport = self.inner.opts.transport.clone();
        if let Err(e) = crate::serving::serve(listener, &transport, what, app, stop).await {
            warn!(relay = %self.inner.opts.id, error = %e, "relay server ended");
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
        self.prune_exchanges();
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
                    deploy_types::fleet::may_begin_update(busy, max_unavailable_per_rack)
                };
            if allowed {
                handed.insert((host.to_string(), g.service.clone()), g.build_id.clone());
                out.push(g);
            }
        }
        out
    }
}

pub mod exchange;
mod flight;
mod goals;
mod http;
mod upstream;

use flight::{forward, paced, Inflight, Progress};
pub use goals::*;
use http::*;
use upstream::*;

#[cfg(test)]
mod tests;
