//! The relay's HTTP face: goal long polls, reports, manifests, chunks, probes and metrics.

use super::*;
use deploy_artifact::serve::{self, text};

/// Ready once the rack's goals have been heard from the region.
pub(super) async fn readyz(State(me): State<Arc<Inner>>) -> Response {
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
pub(super) async fn metrics(State(me): State<Arc<Inner>>) -> Response {
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
        (
            "deploy_relay_exchange_asks",
            "Exchange plans the rack's hosts asked for",
            load(&s.exchange_asks),
        ),
        (
            "deploy_relay_bad_peers",
            "Peers reported for serving bytes that did not match their digest",
            load(&s.bad_peers),
        ),
        (
            "deploy_relay_peer_failures",
            "Peers reported unreachable or too slow",
            load(&s.peer_failures),
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
pub(super) struct GoalQuery {
    host: String,
    #[serde(default)]
    version: u64,
    #[serde(default)]
    wait_ms: u64,
}

/// On a secure relay a host reads and reports only for itself: the certificate it connected
/// with must name `host`; otherwise the refusal to answer. (Child relays and nodes fetch
/// manifests and chunks, never goals.)
pub(super) fn not_for(me: &Inner, peer: &Peer, host: &str) -> Option<Response> {
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

pub(super) async fn goal(
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

pub(super) async fn report(
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
        return super::exchange::not_in_rack(&me, &r.host);
    }
    if let Some(Err(e)) = r.peer.as_ref().map(|p| p.check()) {
        return text(StatusCode::BAD_REQUEST, e);
    }
    lock(&me.seen).insert(r.host.clone(), std::time::Instant::now());
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

pub(super) async fn manifest(State(me): State<Arc<Inner>>, Path(raw): Path<String>) -> Response {
    let digest = match serve::path_digest(&raw) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    match me.manifest(&digest).await {
        Ok(m) => serve::manifest_answer(&m),
        Err(e) => text(StatusCode::BAD_GATEWAY, e),
    }
}

pub(super) async fn chunk(
    State(me): State<Arc<Inner>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let digest = match serve::path_digest(&raw) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
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
    serve::chunk_answer(data, &headers, |part| Body::from_stream(paced(me, part)))
}
