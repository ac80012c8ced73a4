//! The worker service: registration, long-poll assignment, lease renewal and completion.
//! Every call runs on the global leader (forwarded there by whichever node receives it).

use deploy_raft::GlobalTypes;
use std::time::{Duration, Instant};

use deploy_proto::v1::worker_service_client::WorkerServiceClient;
use deploy_proto::v1::worker_service_server::WorkerService;
use deploy_proto::v1::{
    AcquireBuildReply, AcquireBuildRequest, CompleteBuildReply, CompleteBuildRequest,
    RegisterWorkerReply, RegisterWorkerRequest, RenewLeaseReply, RenewLeaseRequest,
};
use deploy_state::builds::{BuildCommand, BuildResponse, BuildState, Outcome};
use deploy_types::GroupName;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::build_api::{now_ms, propose};
use crate::error::ApiError;
use crate::routing::{forwarded, hops, Route, Routing};

const GLOBAL: GroupName = GroupName::Global;
/// The longest a worker's long poll is held.
const MAX_WAIT: Duration = Duration::from_secs(30);

pub struct WorkerApi {
    routing: Routing,
}

impl WorkerApi {
    pub fn new(routing: Routing) -> Self {
        Self { routing }
    }

    fn client(&self, addr: &str) -> Result<WorkerServiceClient<Channel>, ApiError> {
        Ok(WorkerServiceClient::new(self.routing.channel(addr)?))
    }

    fn lease_ms(&self) -> u64 {
        self.routing.node.config.builds.lease_ms
    }

    fn check_worker(&self, worker: &str) -> Result<(), ApiError> {
        self.routing
            .node
            .config
            .worker(worker)
            .map(|_| ())
            .ok_or_else(|| {
                ApiError::FailedPrecondition(format!(
                    "worker {worker:?} is not in the cluster config"
                ))
            })
    }
}

/// Waits until the group applies something new, or `until` passes.

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    #[instrument(skip_all, fields(worker = %request.get_ref().worker))]
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerReply>, Status> {
        let hops = hops(&request);
        let peer = crate::peers::require(
            &self.routing.node,
            &request,
            &[crate::peers::PeerKind::Worker, crate::peers::PeerKind::Node],
        )?;
        let req = request.into_inner();
        crate::peers::acting_as(&self.routing.node, &peer, &req.worker)?;
        self.check_worker(&req.worker)?;
        let configured = self
            .routing
            .node
            .config
            .worker(&req.worker)
            .map(|w| w.region.clone());
        if configured.as_deref() != Some(req.region.as_str()) {
            return Err(ApiError::FailedPrecondition(format!(
                "worker {} is configured in region {:?}, not {:?}",
                req.worker,
                configured.unwrap_or_default(),
                req.region
            ))
            .into());
        }
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .register_worker(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        propose(
            h,
            BuildCommand::RegisterWorker {
                worker: req.worker.clone(),
                region: req.region.clone(),
                now_ms: now_ms(),
            },
        )
        .await?;
        info!(worker = %req.worker, region = %req.region, "worker registered");
        Ok(Response::new(RegisterWorkerReply {
            lease_ms: self.lease_ms(),
        }))
    }

    async fn acquire_build(
        &self,
        request: Request<AcquireBuildRequest>,
    ) -> Result<Response<AcquireBuildReply>, Status> {
        let hops = hops(&request);
        let peer = crate::peers::require(
            &self.routing.node,
            &request,
            &[crate::peers::PeerKind::Worker, crate::peers::PeerKind::Node],
        )?;
        let req = request.into_inner();
        crate::peers::acting_as(&self.routing.node, &peer, &req.worker)?;
        self.check_worker(&req.worker)?;
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .acquire_build(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        let until = tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(MAX_WAIT);
        loop {
            if !h.is_leader() {
                // Leadership moved: answer empty, the worker polls again and is routed anew.
                return Ok(Response::new(AcquireBuildReply::default()));
            }
            // Only propose when there is work: an empty poll writes nothing to the log.
            let pending = h.state.read(|d| {
                let b = &d.state.builds;
                !b.queued.is_empty() || b.held_by(&req.worker).is_some()
            });
            if pending {
                let cmd = BuildCommand::Acquire {
                    worker: req.worker.clone(),
                    now_ms: now_ms(),
                    lease_ms: self.lease_ms(),
                };
                if let BuildResponse::Assigned { id, attempt, .. } = propose(h, cmd).await? {
                    let reply = h.state.read(|d| {
                        d.state.builds.get(&id).map(|b| AcquireBuildReply {
                            assigned: true,
                            id: id.clone(),
                            service: b.service.clone(),
                            repo: b.repo.clone(),
                            commit: b.commit.clone(),
                            attempt,
                            lease_ms: self.lease_ms(),
                        })
                    });
                    info!(build = %id, attempt, worker = %req.worker, "build assigned");
                    return Ok(Response::new(reply.unwrap_or_default()));
                }
            }
            if tokio::time::Instant::now() >= until {
                return Ok(Response::new(AcquireBuildReply::default()));
            }
            h.next_change(until).await;
        }
    }

    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseReply>, Status> {
        let hops = hops(&request);
        let peer = crate::peers::require(
            &self.routing.node,
            &request,
            &[crate::peers::PeerKind::Worker, crate::peers::PeerKind::Node],
        )?;
        let req = request.into_inner();
        crate::peers::acting_as(&self.routing.node, &peer, &req.worker)?;
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .renew_lease(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        let now = now_ms();
        let lease_ms = self.lease_ms();
        let stop = |reason: String, cancelled: bool| {
            Ok(Response::new(RenewLeaseReply {
                ok: false,
                reason,
                cancelled,
            }))
        };
        let seen = h.state.read(|d| {
            d.state
                .builds
                .get(&req.id)
                .map(|b| (b.state, b.seq, b.lease.clone()))
        });
        let Some((state, seq, lease)) = seen else {
            return stop(format!("build {} does not exist", req.id), false);
        };
        if state == BuildState::Cancelled {
            return stop("the build was cancelled".into(), true);
        }
        let Some(lease) = lease.filter(|l| l.worker == req.worker && l.attempt == req.attempt)
        else {
            return stop(
                format!(
                    "attempt {} of {} no longer holds the lease",
                    req.attempt, req.worker
                ),
                false,
            );
        };
        // Most renewals are answered from the state: the log is written only once this
        // leader has watched the lease's version for a third of the lease (its own clock).
        let watch = &self.routing.node.leases;
        let third = Duration::from_millis(lease_ms / 3);
        if watch.fresh(lease.version(seq), Instant::now(), third) {
            return Ok(Response::new(RenewLeaseReply {
                ok: true,
                ..Default::default()
            }));
        }
        let cmd = BuildCommand::Renew {
            id: req.id.clone(),
            worker: req.worker.clone(),
            attempt: req.attempt,
            now_ms: now,
            lease_ms,
        };
        match propose(h, cmd).await {
            Ok(_) => {
                let renewed = h.state.read(|d| {
                    d.state
                        .builds
                        .by_seq
                        .get(&seq)
                        .and_then(|b| b.lease.as_ref())
                        .filter(|l| l.worker == req.worker && l.attempt == req.attempt)
                        .map(|l| l.version(seq))
                });
                if let Some(v) = renewed {
                    watch.renewed(v, Instant::now());
                }
                Ok(Response::new(RenewLeaseReply {
                    ok: true,
                    ..Default::default()
                }))
            }
            Err(ApiError::FailedPrecondition(why)) => stop(why, false),
            Err(e) => Err(e.into()),
        }
    }

    #[instrument(skip_all, fields(build = %request.get_ref().id, attempt = request.get_ref().attempt))]
    async fn complete_build(
        &self,
        request: Request<CompleteBuildRequest>,
    ) -> Result<Response<CompleteBuildReply>, Status> {
        let hops = hops(&request);
        let peer = crate::peers::require(
            &self.routing.node,
            &request,
            &[crate::peers::PeerKind::Worker, crate::peers::PeerKind::Node],
        )?;
        let req = request.into_inner();
        crate::peers::acting_as(&self.routing.node, &peer, &req.worker)?;
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .complete_build(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        let outcome = if req.error.is_empty() {
            let artifact_digest = deploy_types::Digest::parse(&req.artifact_digest)
                .map_err(|e| ApiError::InvalidArgument(format!("artifact_digest: {e}")))?;
            Outcome::Built {
                artifact_digest,
                artifact_size: req.artifact_size,
            }
        } else {
            Outcome::Failed {
                error: req.error.clone(),
                retry: req.retry,
            }
        };
        let cfg = &self.routing.node.config;
        let cmd = BuildCommand::Complete {
            id: req.id.clone(),
            worker: req.worker.clone(),
            attempt: req.attempt,
            now_ms: now_ms(),
            outcome,
            regions: cfg.regions().map(str::to_string).collect(),
            max_attempts: cfg.builds.max_attempts,
        };
        match propose(h, cmd).await? {
            BuildResponse::State { state, .. } => {
                info!(build = %req.id, state = state.as_str(), "attempt completed");
                Ok(Response::new(CompleteBuildReply {
                    state: crate::states::build_state(state) as i32,
                }))
            }
            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
        }
    }
}
