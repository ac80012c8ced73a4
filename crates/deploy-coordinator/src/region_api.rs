//! The region API: status, hosts and host reports, answered by the region's own group (so it
//! works while the global group is down), and the two internal calls between a regional
//! leader and the global group.

use deploy_raft::{GlobalTypes, RegionTypes};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use deploy_proto::v1 as pb;
use deploy_proto::v1::region_service_client::RegionServiceClient;
use deploy_proto::v1::region_service_server::RegionService;
use deploy_state::region::{Region, RegionCommand, RegionRelease};
use deploy_state::releases::{Counts, RegionProgress, ReleaseCommand, ReleaseResponse};
use deploy_state::{GlobalCommand, RegionalCommand, Response as SmResponse};
use deploy_types::GroupName;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::build_api::now_ms;
use crate::error::ApiError;
use crate::group::GroupHandle;
use crate::release_api::propose_release;
use crate::reports::{HostSeen, MAX_HOSTS_PER_REPORT, MAX_SERVICES_PER_HOST};
use crate::routing::{forwarded, hops, Route, Routing};

/// Who may report a rack and watch its goals: its relay, a host for itself (when its relay
/// is down), or a node passing the call on.
const RACK_PEERS: &[crate::peers::PeerKind] = &[
    crate::peers::PeerKind::Relay,
    crate::peers::PeerKind::Agent,
    crate::peers::PeerKind::Node,
];

/// How often relays should report.
pub const REPORT_EVERY_MS: u32 = 500;
/// Decisions one pull returns at most.
pub const MAX_PULL: u32 = 256;
/// Finished releases a status page shows.
const RECENT_FINISHED: usize = 10;
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

/// The group of a named region, checked against the config.
fn region_group(routing: &Routing, region: &str) -> Result<GroupName, ApiError> {
    if routing.node.config.region(region).is_none() {
        let known: Vec<&str> = routing.node.config.regions().collect();
        return Err(ApiError::NotFound(format!(
            "region {:?} is not in the cluster config (regions: {})",
            region.chars().take(64).collect::<String>(),
            known.join(", ")
        )));
    }
    Ok(GroupName::Region(region.to_string()))
}

fn region_release(r: &RegionRelease) -> pb::RegionRelease {
    pb::RegionRelease {
        id: r.id(),
        service: r.service.clone(),
        build_id: r.build_id.clone(),
        state: crate::states::release_state(r.state) as i32,
        wave: r.wave + 1,
        waves: r.plan.len() as u32,
        hosts_total: r.counts.hosts_total,
        hosts_updated: r.counts.hosts_updated,
        hosts_failed: r.counts.hosts_failed,
        reason: r.reason.clone(),
        wave_started_at_ms: r.wave_started_ms,
        history: r
            .history
            .iter()
            .map(|e| pb::RegionEvent {
                at_ms: e.at_ms,
                by: e.by.clone(),
                what: e.what.clone(),
            })
            .collect(),
    }
}

fn host_view(
    region: &str,
    state: &Region,
    host: &str,
    seen: Option<&HostSeen>,
    now: Instant,
) -> Option<pb::Host> {
    let rack = state.hosts.get(host)?;
    let goals: BTreeMap<String, _> = state.goals_of(host).into_iter().collect();
    let mut services: BTreeMap<String, pb::HostService> = goals
        .iter()
        .map(|(s, g)| {
            (
                s.clone(),
                pb::HostService {
                    service: s.clone(),
                    goal_build_id: g.build_id.clone(),
                    goal_release: g.release.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    if let Some(seen) = seen {
        for (s, r) in &seen.services {
            let e = services
                .entry(s.clone())
                .or_insert_with(|| pb::HostService {
                    service: s.clone(),
                    ..Default::default()
                });
            e.running_build_id = r.build_id.clone();
            e.state = r.state as i32;
            e.detail = r.detail.clone();
        }
    }
    Some(pb::Host {
        host: host.to_string(),
        rack: rack.clone(),
        region: region.to_string(),
        services: services.into_values().collect(),
        last_report_ms_ago: seen
            .map(|s| now.saturating_duration_since(s.at).as_millis() as u64)
            .unwrap_or(0),
        reported: seen.is_some(),
    })
}

/// The goals of `hosts`, as a relay or simulator is told them.
fn rack_goals(r: &Region, hosts: &[String]) -> pb::ReportRackReply {
    pb::ReportRackReply {
        hosts: hosts
            .iter()
            .map(|host| pb::HostGoals {
                host: host.clone(),
                registered: r.hosts.contains_key(host),
                goals: r
                    .goals_of(host)
                    .into_iter()
                    .map(|(service, g)| pb::ServiceGoal {
                        max_unavailable_per_rack: r
                            .release(&g.release)
                            .map(|rel| rel.strategy.max_unavailable_per_rack)
                            .unwrap_or(1),
                        service,
                        build_id: g.build_id,
                        // `goals_of` leaves out "nothing" goals: every one names a digest.
                        artifact_digest: g
                            .artifact_digest
                            .map(|d| d.to_string())
                            .unwrap_or_default(),
                        release: g.release,
                    })
                    .collect(),
            })
            .collect(),
        report_every_ms: REPORT_EVERY_MS,
    }
}

/// How often a watch repeats unchanged goals, so a relay notices a dead stream.
const WATCH_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(3);
/// The least time between two looks at the state by one watch: thousands of watches (one per
/// rack) would otherwise each recompute their goals on every commit of a burst, such as
/// thousands of racks registering their hosts.
const WATCH_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(50);

type GoalStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ReportRackReply, Status>> + Send>>;

pub struct RegionApi {
    routing: Routing,
}

impl RegionApi {
    pub fn new(routing: Routing) -> Self {
        Self { routing }
    }

    fn client(&self, addr: &str) -> Result<RegionServiceClient<Channel>, ApiError> {
        Ok(RegionServiceClient::new(self.routing.channel(addr)?))
    }

    /// The host reports this replica holds: only a leader has them.
    fn reports(
        &self,
        h: &GroupHandle<RegionTypes>,
        region: &str,
    ) -> Option<HashMap<String, HostSeen>> {
        if !h.is_leader() {
            return None;
        }
        let term = h.metrics().current_term;
        Some(self.routing.node.reports.all(region, term, Instant::now()))
    }
}

#[tonic::async_trait]
impl RegionService for RegionApi {
    async fn region_status(
        &self,
        request: Request<pb::RegionStatusRequest>,
    ) -> Result<Response<pb::RegionStatusReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let group = region_group(&self.routing, &req.region)?;
        let h = match self
            .routing
            .reader::<RegionTypes>(&group, req.stale, hops)
            .await?
        {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .region_status(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let seen = self.reports(h, &req.region);
        let status = h.status();
        let reply = h.state.read(|d| {
            let r = &d.state.region;
            let mut releases: Vec<pb::RegionRelease> = r.unfinished().map(region_release).collect();
            releases.extend(
                r.releases
                    .values()
                    .rev()
                    .filter(|x| x.state.is_final())
                    .take(RECENT_FINISHED)
                    .map(region_release),
            );
            let services = r
                .services
                .iter()
                .map(|(s, g)| {
                    let mut goals: BTreeMap<String, u64> = BTreeMap::new();
                    for host in r.hosts.keys() {
                        if let Some((_, goal)) = r.goals_of(host).into_iter().find(|(x, _)| x == s)
                        {
                            *goals.entry(goal.build_id).or_default() += 1;
                        }
                    }
                    let mut running: BTreeMap<String, u64> = BTreeMap::new();
                    for h in seen.iter().flat_map(|m| m.values()) {
                        if let Some(x) = h.services.get(s) {
                            *running.entry(x.build_id.clone()).or_default() += 1;
                        }
                    }
                    let counts = |m: BTreeMap<String, u64>| {
                        m.into_iter()
                            .map(|(build_id, hosts)| pb::BuildHosts { build_id, hosts })
                            .collect()
                    };
                    pb::ServiceStatus {
                        service: s.clone(),
                        active_release: g
                            .active
                            .map(deploy_state::releases::release_id)
                            .unwrap_or_default(),
                        goals: counts(goals),
                        running: counts(running),
                    }
                })
                .collect();
            pb::RegionStatusReply {
                region: req.region.clone(),
                answered_by: status.node_id.clone(),
                leader: status.leader.clone(),
                applied_decision: r.applied,
                hosts: r.hosts.len() as u64,
                racks: r.racks().len() as u64,
                services,
                releases,
                has_reports: seen.is_some(),
                relays: r
                    .relays
                    .iter()
                    .map(|(relay, rack)| pb::RelayRack {
                        relay: relay.clone(),
                        rack: rack.clone(),
                    })
                    .collect(),
            }
        });
        Ok(Response::new(reply))
    }

    async fn list_hosts(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let group = region_group(&self.routing, &req.region)?;
        if !req.rack.is_empty() {
            deploy_types::check_name("rack", &req.rack).map_err(invalid)?;
        }
        if !req.page_token.is_empty() {
            deploy_types::check_name("page_token", &req.page_token).map_err(invalid)?;
        }
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        } as usize;
        let h = match self
            .routing
            .reader::<RegionTypes>(&group, req.stale, hops)
            .await?
        {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .list_hosts(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let seen = self.reports(h, &req.region).unwrap_or_default();
        let now = Instant::now();
        let reply = h.state.read(|d| {
            let r = &d.state.region;
            let after = req.page_token.clone();
            let mut hosts: Vec<pb::Host> = r
                .hosts
                .iter()
                .filter(|(host, rack)| {
                    (req.rack.is_empty() || **rack == req.rack)
                        && (after.is_empty() || **host > after)
                })
                .take(size + 1)
                .filter_map(|(host, _)| host_view(&req.region, r, host, seen.get(host), now))
                .collect();
            let next = if hosts.len() > size {
                hosts.truncate(size);
                hosts.last().map(|h| h.host.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            pb::ListHostsReply {
                hosts,
                next_page_token: next,
            }
        });
        Ok(Response::new(reply))
    }

    async fn get_host(
        &self,
        request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::Host>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let group = region_group(&self.routing, &req.region)?;
        deploy_types::check_name("host", &req.host).map_err(invalid)?;
        let h = match self
            .routing
            .reader::<RegionTypes>(&group, req.stale, hops)
            .await?
        {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .get_host(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let seen = self.reports(h, &req.region).unwrap_or_default();
        let host = h.state.read(|d| {
            host_view(
                &req.region,
                &d.state.region,
                &req.host,
                seen.get(&req.host),
                Instant::now(),
            )
        });
        host.map(Response::new).ok_or_else(|| {
            ApiError::NotFound(format!(
                "host {} is not registered in region {}",
                req.host, req.region
            ))
            .into()
        })
    }

    async fn report_rack(
        &self,
        request: Request<pb::ReportRackRequest>,
    ) -> Result<Response<pb::ReportRackReply>, Status> {
        let hops = hops(&request);
        let peer = crate::peers::require(&self.routing.node, &request, RACK_PEERS)?;
        let req = request.into_inner();
        crate::peers::reports_for(&self.routing.node, &peer, &req)?;
        let group = region_group(&self.routing, &req.region)?;
        deploy_types::check_name("rack", &req.rack).map_err(invalid)?;
        if req.hosts.len() > MAX_HOSTS_PER_REPORT {
            return Err(invalid(format!("at most {MAX_HOSTS_PER_REPORT} hosts per report")).into());
        }
        for host in &req.hosts {
            deploy_types::check_name("host", &host.host).map_err(invalid)?;
            if host.services.len() > MAX_SERVICES_PER_HOST {
                return Err(invalid(format!(
                    "host {}: at most {MAX_SERVICES_PER_HOST} services",
                    host.host
                ))
                .into());
            }
            for s in &host.services {
                deploy_types::check_service(&s.service).map_err(invalid)?;
                // Unknown numbers decode as UNSPECIFIED, which no agent reports.
                if s.state() == pb::ServiceState::Unspecified {
                    return Err(invalid(format!(
                        "host {}: service {} reports no state (or one this node does not know: {})",
                        host.host, s.service, s.state
                    ))
                    .into());
                }
                if s.build_id.len() > 64 || s.detail.len() > 4096 {
                    return Err(invalid(format!(
                        "host {}: build_id or detail too long",
                        host.host
                    ))
                    .into());
                }
            }
        }
        fleet_allows(&self.routing.node.config, &req).map_err(ApiError::FailedPrecondition)?;
        let h = match self.routing.route::<RegionTypes>(&group, hops).await? {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .report_rack(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        // Hosts the region does not know yet (or that moved rack) are registered once.
        let new: Vec<(String, String)> = h.state.read(|d| {
            req.hosts
                .iter()
                .filter(|x| d.state.region.hosts.get(&x.host) != Some(&req.rack))
                .map(|x| (x.host.clone(), req.rack.clone()))
                .collect()
        });
        if !new.is_empty() {
            propose_release(
                h,
                RegionalCommand::Region(RegionCommand::RegisterHosts { hosts: new }),
            )
            .await?;
        }
        if !req.relay.is_empty() {
            deploy_types::check_name("relay", &req.relay).map_err(invalid)?;
            let known = h
                .state
                .read(|d| d.state.region.relays.get(&req.relay) == Some(&req.rack));
            if !known {
                let cmd = RegionCommand::RegisterRelay {
                    relay: req.relay.clone(),
                    rack: req.rack.clone(),
                };
                propose_release(h, RegionalCommand::Region(cmd)).await?;
            }
        }
        let term = h.metrics().current_term;
        self.routing
            .node
            .reports
            .record(&req.region, term, &req.rack, &req.hosts, Instant::now());
        if !req.relay.is_empty() {
            self.routing
                .node
                .reports
                .record_relay(&req.region, term, &req.relay, Instant::now());
        }
        let hosts: Vec<String> = req.hosts.iter().map(|x| x.host.clone()).collect();
        Ok(Response::new(
            h.state.read(|d| rack_goals(&d.state.region, &hosts)),
        ))
    }

    type WatchRackStream = GoalStream;

    async fn watch_rack(
        &self,
        request: Request<pb::WatchRackRequest>,
    ) -> Result<Response<GoalStream>, Status> {
        let hops = hops(&request);
        let peer = crate::peers::require(&self.routing.node, &request, RACK_PEERS)?;
        let slot = crate::auth::watch_slot(&self.routing.node, &request)?;
        let req = request.into_inner();
        crate::peers::watches_for(&self.routing.node, &peer, &req)?;
        let group = region_group(&self.routing, &req.region)?;
        deploy_types::check_name("rack", &req.rack).map_err(invalid)?;
        if req.hosts.len() > MAX_HOSTS_PER_REPORT {
            return Err(invalid(format!("at most {MAX_HOSTS_PER_REPORT} hosts per rack")).into());
        }
        for host in &req.hosts {
            deploy_types::check_name("host", host).map_err(invalid)?;
        }
        let h = match self.routing.route::<RegionTypes>(&group, hops).await? {
            Route::Local(h) => h.clone(),
            Route::Remote(addr) => {
                let remote = self
                    .client(&addr)?
                    .watch_rack(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))?;
                return Ok(Response::new(Box::pin(crate::limits::holding(
                    remote.into_inner(),
                    slot,
                ))));
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _slot = slot;
            let mut last = None;
            let mut sent_at = tokio::time::Instant::now();
            loop {
                let looked_at = tokio::time::Instant::now();
                if !h.is_leader() {
                    let moved = Status::unavailable("leadership moved; watch again");
                    let _ = tx.send(Err(moved)).await;
                    return;
                }
                let reply = h.state.read(|d| rack_goals(&d.state.region, &req.hosts));
                if last.as_ref() != Some(&reply) || sent_at.elapsed() >= WATCH_HEARTBEAT {
                    if tx.send(Ok(reply.clone())).await.is_err() {
                        return;
                    }
                    last = Some(reply);
                    sent_at = tokio::time::Instant::now();
                }
                // A watcher that went away frees its stream's place at once.
                tokio::select! {
                    _ = h.next_change(tokio::time::Instant::now() + WATCH_HEARTBEAT) => {}
                    _ = tx.closed() => return,
                }
                tokio::time::sleep_until(looked_at + WATCH_MIN_GAP).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn pull_decisions(
        &self,
        request: Request<pb::PullDecisionsRequest>,
    ) -> Result<Response<pb::PullDecisionsReply>, Status> {
        let hops = hops(&request);
        crate::peers::require(
            &self.routing.node,
            &request,
            &[crate::peers::PeerKind::Node],
        )?;
        let req = request.into_inner();
        region_group(&self.routing, &req.region)?;
        let h = match self
            .routing
            .route::<GlobalTypes>(&GroupName::Global, hops)
            .await?
        {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .pull_decisions(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let limit = req.limit.clamp(1, MAX_PULL) as usize;
        let (decisions, upto) = h
            .state
            .read(|d| {
                // What the region says it applied, never past what was decided.
                let applied = req.after.min(d.state.releases.last_decision);
                self.routing.node.pulls.saw(&req.region, applied);
                d.state.releases.decisions_for(&req.region, req.after, limit)
            })
            .map_err(|oldest| {
                ApiError::FailedPrecondition(format!(
                    "region {} applied decisions up to {}, but the oldest kept is {oldest}: it must be rebuilt from a snapshot of another region replica",
                    req.region, req.after
                ))
            })?;
        let decisions =
            serde_json::to_vec(&decisions).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Response::new(pb::PullDecisionsReply { decisions, upto }))
    }

    async fn report_region(
        &self,
        request: Request<pb::ReportRegionRequest>,
    ) -> Result<Response<pb::ReportRegionReply>, Status> {
        let hops = hops(&request);
        crate::peers::require(
            &self.routing.node,
            &request,
            &[crate::peers::PeerKind::Node],
        )?;
        let req = request.into_inner();
        region_group(&self.routing, &req.region)?;
        let state = crate::states::from_release_state(req.state())
            .ok_or_else(|| invalid(format!("state {} is not a release state", req.state)))?;
        if req.reason.len() > 4096 {
            return Err(invalid("reason: at most 4096 bytes").into());
        }
        let h = match self
            .routing
            .route::<GlobalTypes>(&GroupName::Global, hops)
            .await?
        {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .report_region(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let cmd = GlobalCommand::Release(ReleaseCommand::Report {
            id: req.release_id.clone(),
            region: req.region.clone(),
            progress: RegionProgress {
                state: Some(state),
                wave: req.wave,
                waves: req.waves,
                counts: Counts {
                    hosts_total: req.hosts_total,
                    hosts_updated: req.hosts_updated,
                    hosts_failed: req.hosts_failed,
                },
                reason: req.reason,
                updated_at_ms: 0,
            },
            now_ms: now_ms(),
        });
        match propose_release(h, cmd).await? {
            SmResponse::Release(ReleaseResponse::State { state, .. }) => {
                Ok(Response::new(pb::ReportRegionReply {
                    release_state: state.as_str().into(),
                }))
            }
            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
        }
    }
}

/// Whether the fleet config lets `req` into the region's registry. A region whose config
/// lists racks takes only the hosts listed there, each in its own rack, and that rack's
/// relays: a reporter cannot grow the registry with names it invents. A region listing no
/// racks (a simulated fleet) takes any names, up to `MAX_REGION_HOSTS`.
fn fleet_allows(
    config: &deploy_types::ClusterConfig,
    req: &pb::ReportRackRequest,
) -> Result<(), String> {
    let mut racks = config
        .racks()
        .iter()
        .filter(|r| r.region == req.region)
        .peekable();
    if racks.peek().is_none() {
        return Ok(());
    }
    let clip = |s: &str| s.chars().take(64).collect::<String>();
    let Some(rack) = racks.find(|r| r.name == req.rack) else {
        return Err(format!(
            "rack {:?} is not in region {}'s fleet config",
            clip(&req.rack),
            req.region
        ));
    };
    if let Some(h) = req.hosts.iter().find(|h| !rack.hosts.contains(&h.host)) {
        return Err(format!(
            "host {:?} is not in rack {} of region {}'s fleet config",
            clip(&h.host),
            rack.name,
            req.region
        ));
    }
    if !req.relay.is_empty() && !rack.relays.iter().any(|r| r.id == req.relay) {
        return Err(format!(
            "relay {:?} is not rack {}'s in region {}'s fleet config",
            clip(&req.relay),
            rack.name,
            req.region
        ));
    }
    Ok(())
}
