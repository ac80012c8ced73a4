//! The public release API: create, get, list, and operator actions. Decided by the global
//! group; any node forwards to its leader.

use deploy_proto::v1 as pb;
use deploy_proto::v1::release_service_client::ReleaseServiceClient;
use deploy_proto::v1::release_service_server::ReleaseService;
use deploy_raft::{GlobalTypes, GroupTypes};
use deploy_state::releases::MAX_RELEASE_REGIONS;
use deploy_state::releases::{
    parse_release_id, Action, Release, ReleaseCommand, ReleaseError, ReleaseResponse, Strategy,
};
use deploy_state::rollout::Canary;
use deploy_state::{GlobalCommand, Response as SmResponse};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::build_api::now_ms;
use crate::error::ApiError;
use crate::group::{Cmd, GroupHandle};
use crate::paging::{list_args, merged_page, MAX_HISTORY_SCAN};
use crate::routing::{forwarded, hops, Route, Routing};

const MAX_ACTOR_BYTES: usize = 64;

/// A refused release command as an API error.
pub fn release_error(e: ReleaseError) -> ApiError {
    match e {
        ReleaseError::NotFound(_) => ApiError::NotFound(e.to_string()),
        ReleaseError::Invalid { .. } => ApiError::InvalidArgument(e.to_string()),
        ReleaseError::WrongState { .. } | ReleaseError::Refused(_) => {
            ApiError::FailedPrecondition(e.to_string())
        }
    }
}

/// Proposes a release or region command on the local leader.
pub async fn propose_release<C: GroupTypes>(
    h: &GroupHandle<C>,
    cmd: Cmd<C>,
) -> Result<SmResponse, ApiError> {
    match h.propose(cmd).await?.1 {
        SmResponse::ReleaseRejected(e) => Err(release_error(e)),
        SmResponse::Rejected(e) => Err(ApiError::InvalidArgument(e)),
        other => Ok(other),
    }
}

fn canary_str(c: &Canary) -> String {
    match c {
        Canary::None => "none".into(),
        Canary::FirstRack => "first-rack".into(),
        Canary::Hosts(n) => n.to_string(),
    }
}

pub fn parse_canary(s: &str) -> Result<Canary, ApiError> {
    match s {
        "none" => Ok(Canary::None),
        "first-rack" => Ok(Canary::FirstRack),
        n => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n > 0)
            .map(Canary::Hosts)
            .ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "canary {:?}: expected none, first-rack, or a number of hosts",
                    n.chars().take(40).collect::<String>()
                ))
            }),
    }
}

/// A strategy from the API, defaults filled in, checked.
pub fn strategy_from_proto(p: Option<pb::Strategy>) -> Result<Strategy, ApiError> {
    let d = Strategy::default();
    let p = p.unwrap_or_default();
    let s = Strategy {
        canary: match p.canary.as_deref() {
            None => d.canary,
            Some(c) => parse_canary(c)?,
        },
        waves: if p.waves.is_empty() { d.waves } else { p.waves },
        max_unavailable_per_rack: p
            .max_unavailable_per_rack
            .unwrap_or(d.max_unavailable_per_rack),
        failure_threshold_pct: p.failure_threshold_pct.unwrap_or(d.failure_threshold_pct),
        min_healthy_ms: p.min_healthy_ms.unwrap_or(d.min_healthy_ms),
        progress_deadline_ms: p.progress_deadline_ms.unwrap_or(d.progress_deadline_ms),
        regions_at_once: p.regions_at_once.unwrap_or(d.regions_at_once),
        auto_rollback: p.auto_rollback.unwrap_or(d.auto_rollback),
        halt_all_on_failure: p.halt_all_on_failure.unwrap_or(d.halt_all_on_failure),
    };
    s.check().map_err(release_error)?;
    s.check_bounds().map_err(release_error)?;
    Ok(s)
}

pub fn strategy_to_proto(s: &Strategy) -> pb::Strategy {
    pb::Strategy {
        canary: Some(canary_str(&s.canary)),
        waves: s.waves.clone(),
        max_unavailable_per_rack: Some(s.max_unavailable_per_rack),
        failure_threshold_pct: Some(s.failure_threshold_pct),
        min_healthy_ms: Some(s.min_healthy_ms),
        progress_deadline_ms: Some(s.progress_deadline_ms),
        regions_at_once: Some(s.regions_at_once),
        auto_rollback: Some(s.auto_rollback),
        halt_all_on_failure: Some(s.halt_all_on_failure),
    }
}

pub fn release_to_proto(r: &Release) -> pb::Release {
    let c = r.counts();
    pb::Release {
        id: r.id(),
        service: r.service.clone(),
        build_id: r.build_id.clone(),
        artifact_digest: r.artifact_digest.to_string(),
        state: crate::states::release_state(r.state) as i32,
        reason: r.reason.clone(),
        hosts_total: c.hosts_total,
        hosts_updated: c.hosts_updated,
        hosts_failed: c.hosts_failed,
        regions: r
            .regions
            .iter()
            .map(|g| {
                let p = r.progress.get(g).cloned().unwrap_or_default();
                let started = p.state.is_some();
                pb::RegionRollout {
                    region: g.clone(),
                    state: crate::states::release_state(p.state()) as i32,
                    wave: if started { p.wave + 1 } else { 0 },
                    waves: p.waves,
                    hosts_total: p.counts.hosts_total,
                    hosts_updated: p.counts.hosts_updated,
                    hosts_failed: p.counts.hosts_failed,
                    reason: p.reason,
                    updated_at_ms: p.updated_at_ms,
                }
            })
            .collect(),
        strategy: Some(strategy_to_proto(&r.strategy)),
        created_by: r.created_by.clone(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        finished_at_ms: r.finished_at_ms.unwrap_or(0),
        superseded_by: r.superseded_by.clone().unwrap_or_default(),
        history: r
            .history
            .iter()
            .map(|e| pb::ReleaseEvent {
                at_ms: e.at_ms,
                by: e.by.clone(),
                what: e.what.clone(),
            })
            .collect(),
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    parse_release_id(id).map(|_| ()).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "id {:?} is not a release id (r-<number>)",
            id.chars().take(40).collect::<String>()
        ))
    })
}

/// Who decides: the caller's token (with the actor the request claims), or on an insecure
/// cluster the claimed actor, or "anonymous".
pub fn actor(claimed: &str) -> Result<String, ApiError> {
    if claimed.len() > MAX_ACTOR_BYTES || claimed.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(format!(
            "actor: expected at most {MAX_ACTOR_BYTES} printable bytes"
        )));
    }
    let a = crate::auth::decided_by(claimed);
    if a.is_empty() {
        return Ok("anonymous".into());
    }
    if a.len() > MAX_ACTOR_BYTES || a.chars().any(char::is_control) {
        return Err(ApiError::InvalidArgument(format!(
            "actor: expected at most {MAX_ACTOR_BYTES} printable bytes"
        )));
    }
    Ok(a.to_string())
}

/// A call's request id: none when empty; else at most 64 printable characters.
fn request_id(r: &str) -> Result<Option<String>, ApiError> {
    if r.is_empty() {
        return Ok(None);
    }
    if r.len() > 64 || !r.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidArgument(
            "request_id: expected at most 64 printable characters".into(),
        ));
    }
    Ok(Some(r.to_string()))
}

/// A release from the state, or from the history once retention collected it.
fn read_release(h: &GroupHandle<GlobalTypes>, id: &str) -> Result<pb::Release, ApiError> {
    if let Some(r) = h
        .state
        .read(|d| d.state.releases.get(id).map(release_to_proto))
    {
        return Ok(r);
    }
    let seq = deploy_state::releases::parse_release_id(id).unwrap_or(0);
    let row = h
        .state
        .collected_release(seq)
        .map_err(|e| ApiError::Internal(format!("reading the release history: {e}")))?;
    crate::build_api::from_history("release", id, row, release_to_proto)
}

pub struct ReleaseApi {
    routing: Routing,
}

impl ReleaseApi {
    pub fn new(routing: Routing) -> Self {
        Self { routing }
    }

    fn client(&self, addr: &str) -> Result<ReleaseServiceClient<Channel>, ApiError> {
        Ok(ReleaseServiceClient::new(self.routing.channel(addr)?))
    }
}

#[tonic::async_trait]
impl ReleaseService for ReleaseApi {
    #[instrument(skip_all, fields(service = %request.get_ref().service, build = %request.get_ref().build_id))]
    async fn create_release(
        &self,
        request: Request<pb::CreateReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        deploy_types::check_service(&req.service)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        if deploy_state::builds::parse_build_id(&req.build_id).is_none() {
            return Err(ApiError::InvalidArgument(format!(
                "build_id {:?} is not a build id (b-<number>)",
                req.build_id.chars().take(40).collect::<String>()
            ))
            .into());
        }
        if req.regions.len() > MAX_RELEASE_REGIONS as usize {
            return Err(ApiError::InvalidArgument(format!(
                "regions names {} regions, over the {MAX_RELEASE_REGIONS} a release may",
                req.regions.len()
            ))
            .into());
        }
        for r in &req.regions {
            deploy_types::check_name("region", r)
                .map_err(|e| ApiError::InvalidArgument(format!("regions: {e}")))?;
        }
        let strategy = strategy_from_proto(req.strategy.clone())?;
        crate::auth::may_touch(&req.service)?;
        let by = actor(&req.actor)?;
        let request_id = request_id(&req.request_id)?;
        let h = match self.routing.global(hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .create_release(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        let known = self.routing.regions();
        let regions = if req.regions.is_empty() {
            known.clone()
        } else {
            req.regions.clone()
        };
        let cmd = GlobalCommand::Release(ReleaseCommand::Create {
            service: req.service,
            build_id: req.build_id,
            regions,
            strategy,
            by,
            now_ms: now_ms(),
            known_regions: known,
            request_id,
        });
        match propose_release(h, cmd).await? {
            SmResponse::Release(ReleaseResponse::Created { id, superseded }) => {
                info!(release = %id, superseded = ?superseded, "release created");
                Ok(Response::new(read_release(h, &id)?))
            }
            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
        }
    }

    async fn get_release(
        &self,
        request: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        check_id(&req.id)?;
        match self.routing.global_reader(req.stale, hops).await? {
            Route::Local(h) => Ok(Response::new(read_release(h, &req.id)?)),
            Route::Remote(addr) => self
                .client(&addr)?
                .get_release(forwarded(req, hops))
                .await
                .map_err(|s| crate::routing::relay_error(&addr, s)),
        }
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let args = list_args(
            &req.service,
            crate::states::release_filter(req.state)?,
            &req.page_token,
            req.page_size,
        )?;
        let h = match self.routing.global_reader(req.stale, hops).await? {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .list_releases(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let live: Vec<Release> = h.state.read(|d| {
            d.state
                .releases
                .list(args.service.as_deref(), args.state, args.before)
                .take(args.size + 1)
                .cloned()
                .collect()
        });
        // Releases retention moved to the history follow, merged in by seq.
        let history = |e: openraft::StorageError<deploy_raft::NodeId>| {
            ApiError::Internal(format!("reading the release history: {e}"))
        };
        let older = h
            .state
            .collected_releases_before(args.before.unwrap_or(u64::MAX))
            .map_err(history)?
            .map(|row| {
                let (seq, r) = row.map_err(history)?;
                let r = r.filter(|r| {
                    args.service.as_deref().is_none_or(|s| r.service == s)
                        && args.state.is_none_or(|s| r.state == s)
                });
                Ok((seq, r))
            });
        let (page, next) = merged_page(live, older, args.size, MAX_HISTORY_SCAN, |r| r.seq)?;
        Ok(Response::new(pb::ListReleasesReply {
            releases: page.iter().map(release_to_proto).collect(),
            next_page_token: next,
        }))
    }

    #[instrument(skip_all, fields(release = %request.get_ref().id, action = %request.get_ref().action))]
    async fn release_action(
        &self,
        request: Request<pb::ReleaseActionRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        check_id(&req.id)?;
        let action = Action::parse(&req.action).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "action {:?} is not one of pause, resume, abort, rollback, promote",
                req.action.chars().take(40).collect::<String>()
            ))
        })?;
        let by = actor(&req.actor)?;
        let request_id = request_id(&req.request_id)?;
        if req.reason.len() > 1024 {
            return Err(ApiError::InvalidArgument("reason: at most 1024 bytes".into()).into());
        }
        let h = match self.routing.global(hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .release_action(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        // A releaser limited to some services acts only on their releases.
        if let Some(service) = h
            .state
            .read(|d| d.state.releases.get(&req.id).map(|r| r.service.clone()))
        {
            crate::auth::may_touch(&service)?;
        }
        let cmd = GlobalCommand::Release(ReleaseCommand::Act {
            id: req.id.clone(),
            action,
            by: by.clone(),
            reason: req.reason,
            now_ms: now_ms(),
            request_id,
        });
        propose_release(h, cmd).await?;
        info!(release = %req.id, action = action.as_str(), %by, "release action");
        Ok(Response::new(read_release(h, &req.id)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: pb::Strategy) -> Status {
        match strategy_from_proto(Some(p)) {
            Ok(s) => panic!("accepted {s:?}"),
            Err(e) => Status::from(e),
        }
    }

    #[test]
    fn strategies_past_what_a_fleet_could_mean_are_refused_naming_the_field() {
        let absurd = u32::MAX;
        for (field, p) in [
            (
                "canary",
                pb::Strategy {
                    canary: Some(absurd.to_string()),
                    ..Default::default()
                },
            ),
            (
                "max_unavailable_per_rack",
                pb::Strategy {
                    max_unavailable_per_rack: Some(absurd),
                    ..Default::default()
                },
            ),
            (
                "regions_at_once",
                pb::Strategy {
                    regions_at_once: Some(absurd),
                    ..Default::default()
                },
            ),
        ] {
            let s = refused(p);
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{field}: {s:?}");
            assert!(s.message().starts_with(field), "{field}: {}", s.message());
            assert!(s.message().contains("at most"), "{field}: {}", s.message());
        }
        // At the bounds, accepted.
        let s = strategy_from_proto(Some(pb::Strategy {
            canary: Some(deploy_state::releases::MAX_CANARY_HOSTS.to_string()),
            max_unavailable_per_rack: Some(deploy_state::releases::MAX_UNAVAILABLE_PER_RACK),
            regions_at_once: Some(MAX_RELEASE_REGIONS),
            ..Default::default()
        }));
        assert!(s.is_ok(), "{s:?}");
    }

    #[test]
    fn ten_thousand_waves_get_a_short_error() {
        let s = refused(pb::Strategy {
            waves: (1..=10_000).collect(),
            ..Default::default()
        });
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().starts_with("waves"), "{}", s.message());
        assert!(s.message().contains("9976 more"), "{}", s.message());
        assert!(s.message().len() < 400, "{} bytes", s.message().len());
    }
}
