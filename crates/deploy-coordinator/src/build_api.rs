//! The public build API: submit, get, list, cancel, and the build log stream.

use deploy_raft::GlobalTypes;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deploy_proto::v1::build_service_client::BuildServiceClient;
use deploy_proto::v1::build_service_server::BuildService;
use deploy_proto::v1::{
    Build as PbBuild, BuildLogsRequest, BuildTransition, CancelBuildRequest, GetBuildRequest,
    ListBuildsReply, ListBuildsRequest, LogChunk, SubmitBuildRequest,
};
use deploy_raft::history::HistoryRow;
use deploy_state::builds::{
    parse_build_id, Build, BuildCommand, BuildError, BuildResponse, BuildState,
};
use deploy_state::{GlobalCommand, Response as SmResponse};
use deploy_types::GroupName;
use futures::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::error::ApiError;
use crate::group::GroupHandle;
use crate::paging::{list_args, merged_page, MAX_HISTORY_SCAN};
use crate::routing::{forwarded, hops, Route, Routing};

const GLOBAL: GroupName = GroupName::Global;
/// How often a followed log is polled for new segments.
const LOG_POLL: Duration = Duration::from_millis(250);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A build as the API shows it; `regions` are the cluster's regions.
pub fn to_proto(b: &Build, regions: &[String]) -> PbBuild {
    PbBuild {
        id: b.id(),
        service: b.service.clone(),
        repo: b.repo.clone(),
        commit: b.commit.clone(),
        state: crate::states::build_state(b.state) as i32,
        attempts: b.attempts,
        worker: b.worker.clone(),
        artifact_digest: b.artifact_digest.map(|d| d.to_string()).unwrap_or_default(),
        artifact_size: b.artifact_size,
        error: b.error.clone().unwrap_or_default(),
        created_at_ms: b.created_at_ms,
        updated_at_ms: b.updated_at_ms,
        started_at_ms: b.started_at_ms.unwrap_or(0),
        finished_at_ms: b.finished_at_ms.unwrap_or(0),
        regions_done: b.regions_done.iter().cloned().collect(),
        history: b
            .history
            .iter()
            .map(|t| BuildTransition {
                state: crate::states::build_state(t.state) as i32,
                at_ms: t.at_ms,
                note: t.note.clone(),
            })
            .collect(),
        created: false,
        replication: replication_of(b, regions),
    }
}

/// Each configured region's copy of the artifact.
fn replication_of(b: &Build, regions: &[String]) -> Vec<deploy_proto::v1::RegionReplication> {
    regions
        .iter()
        .map(|r| deploy_proto::v1::RegionReplication {
            region: r.clone(),
            state: if b.regions_done.contains(r) {
                deploy_proto::v1::ReplicationState::Done
            } else if b.replication_failed.as_ref() == Some(r) {
                deploy_proto::v1::ReplicationState::Failed
            } else {
                deploy_proto::v1::ReplicationState::Pending
            } as i32,
            bytes_copied: b.bytes_copied.get(r).copied().unwrap_or(0),
        })
        .collect()
}

/// A refused build command as an API error.
pub fn build_error(e: BuildError) -> ApiError {
    match e {
        BuildError::NotFound(_) => ApiError::NotFound(e.to_string()),
        BuildError::Invalid { .. } => ApiError::InvalidArgument(e.to_string()),
        BuildError::QueueFull { .. } => ApiError::ResourceExhausted(e.to_string()),
        BuildError::WrongState { .. } | BuildError::Stale { .. } | BuildError::UnknownWorker(_) => {
            ApiError::FailedPrecondition(e.to_string())
        }
    }
}

/// Proposes a build command on the local leader.
pub async fn propose(
    h: &GroupHandle<GlobalTypes>,
    cmd: BuildCommand,
) -> Result<BuildResponse, ApiError> {
    match h.propose(GlobalCommand::Build(cmd)).await?.1 {
        SmResponse::Build(r) => Ok(r),
        SmResponse::BuildRejected(e) => Err(build_error(e)),
        other => Err(ApiError::Internal(format!("unexpected response {other:?}"))),
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    parse_build_id(id).map(|_| ()).ok_or_else(|| {
        ApiError::InvalidArgument(format!(
            "id {:?} is not a build id (b-<number>)",
            id.chars().take(40).collect::<String>()
        ))
    })
}

/// The UTC day of a time in milliseconds, `YYYY-MM-DD`.
fn day(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| format!("{ms} ms after the epoch"))
}

/// What the history says of a record the live state no longer holds: the record (within
/// the history period), when retention removed it (after), or that it never existed.
pub(crate) fn from_history<T, P>(
    what: &str,
    id: &str,
    row: Option<HistoryRow<T>>,
    show: impl FnOnce(&T) -> P,
) -> Result<P, ApiError> {
    match row {
        Some(HistoryRow {
            record: Some(r), ..
        }) => Ok(show(&r)),
        Some(HistoryRow {
            removed_at_ms: Some(at),
            collected_at_ms,
            ..
        }) => Err(ApiError::NotFound(format!(
            "{what} {id} was removed by retention on {} (it left the live state on {})",
            day(at),
            day(collected_at_ms)
        ))),
        _ => Err(ApiError::NotFound(format!("{what} {id} does not exist"))),
    }
}

/// A build from the state, or from the history once retention collected it.
fn read_build(
    h: &GroupHandle<GlobalTypes>,
    id: &str,
    regions: &[String],
) -> Result<PbBuild, ApiError> {
    if let Some(b) = h
        .state
        .read(|d| d.state.builds.get(id).map(|b| to_proto(b, regions)))
    {
        return Ok(b);
    }
    let seq = parse_build_id(id).unwrap_or(0);
    let row = h
        .state
        .collected_build(seq)
        .map_err(|e| ApiError::Internal(format!("reading the build history: {e}")))?;
    from_history("build", id, row, |b| to_proto(b, regions))
}

pub struct BuildApi {
    routing: Routing,
}

type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

impl BuildApi {
    pub fn new(routing: Routing) -> Self {
        Self { routing }
    }

    fn client(&self, addr: &str) -> Result<BuildServiceClient<Channel>, ApiError> {
        Ok(BuildServiceClient::new(self.routing.channel(addr)?))
    }
}

/// The token the call came with, for the build's history (none on an insecure cluster).
fn by() -> Option<String> {
    Some(crate::auth::decided_by("")).filter(|s| !s.is_empty())
}

#[tonic::async_trait]
impl BuildService for BuildApi {
    #[instrument(skip_all, fields(service = %request.get_ref().service, commit = %request.get_ref().commit))]
    async fn submit_build(
        &self,
        request: Request<SubmitBuildRequest>,
    ) -> Result<Response<PbBuild>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        deploy_state::check_build_input(&req.service, &req.repo, &req.commit)
            .map_err(build_error)?;
        // The cluster's repository policy, before anything is proposed or forwarded.
        self.routing
            .node
            .config
            .builds
            .allowed_repos
            .check(&req.repo)
            .map_err(ApiError::InvalidArgument)?;
        crate::auth::may_touch(&req.service)?;
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .submit_build(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        let cmd = BuildCommand::Submit {
            service: req.service,
            repo: req.repo,
            commit: req.commit,
            now_ms: now_ms(),
            by: by(),
            max_queued: Some(self.routing.node.config.builds.max_queued),
        };
        if let Some(seam) = &self.routing.node.seams.submit {
            if let Some(b) = seam.before_propose(h, &cmd, &self.routing.regions()) {
                return Ok(Response::new(b));
            }
        }
        match propose(h, cmd).await? {
            BuildResponse::Submitted { id, created } => {
                let mut b = read_build(h, &id, &self.routing.regions())?;
                b.created = created;
                tracing::info!(build = %id, created, "build submitted");
                Ok(Response::new(b))
            }
            other => Err(ApiError::Internal(format!("unexpected response {other:?}")).into()),
        }
    }

    async fn get_build(
        &self,
        request: Request<GetBuildRequest>,
    ) -> Result<Response<PbBuild>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        check_id(&req.id)?;
        match self.routing.global_reader(req.stale, hops).await? {
            Route::Local(h) => Ok(Response::new(read_build(
                h,
                &req.id,
                &self.routing.regions(),
            )?)),
            Route::Remote(addr) => self
                .client(&addr)?
                .get_build(forwarded(req, hops))
                .await
                .map_err(|s| crate::routing::relay_error(&addr, s)),
        }
    }

    async fn list_builds(
        &self,
        request: Request<ListBuildsRequest>,
    ) -> Result<Response<ListBuildsReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let args = list_args(
            &req.service,
            crate::states::build_filter(req.state)?,
            &req.page_token,
            req.page_size,
        )?;
        let h = match self.routing.global_reader(req.stale, hops).await? {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .list_builds(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let regions = self.routing.regions();
        let live: Vec<Build> = h.state.read(|d| {
            d.state
                .builds
                .list(args.service.as_deref(), args.state, args.before)
                .take(args.size + 1)
                .cloned()
                .collect()
        });
        // Builds retention moved to the history follow, merged in by seq.
        let history = |e: openraft::StorageError<deploy_raft::NodeId>| {
            ApiError::Internal(format!("reading the build history: {e}"))
        };
        let older = h
            .state
            .collected_builds_before(args.before.unwrap_or(u64::MAX))
            .map_err(history)?
            .map(|row| {
                let (seq, b) = row.map_err(history)?;
                let b = b.filter(|b| {
                    args.service.as_deref().is_none_or(|s| b.service == s)
                        && args.state.is_none_or(|s| b.state == s)
                });
                Ok((seq, b))
            });
        let (page, next) = merged_page(live, older, args.size, MAX_HISTORY_SCAN, |b| b.seq)?;
        Ok(Response::new(ListBuildsReply {
            builds: page.iter().map(|b| to_proto(b, &regions)).collect(),
            next_page_token: next,
        }))
    }

    #[instrument(skip_all, fields(build = %request.get_ref().id))]
    async fn cancel_build(
        &self,
        request: Request<CancelBuildRequest>,
    ) -> Result<Response<PbBuild>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        check_id(&req.id)?;
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .cancel_build(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        let service = h
            .state
            .read(|d| d.state.builds.get(&req.id).map(|b| b.service.clone()));
        if let Some(service) = service {
            crate::auth::may_touch(&service)?;
        }
        let cancel = GlobalCommand::Build(BuildCommand::Cancel {
            id: req.id.clone(),
            now_ms: now_ms(),
            by: by(),
        });
        let cmd = crate::request_id::once::<deploy_state::GlobalState>(&req.request_id, cancel)?;
        match h.propose(cmd).await?.1 {
            // Sent again under its request id: the build is read as it is now.
            SmResponse::Build(_) | SmResponse::Repeated { .. } => {}
            SmResponse::BuildRejected(e) => return Err(build_error(e).into()),
            other => {
                return Err(ApiError::Internal(format!("unexpected response {other:?}")).into())
            }
        }
        tracing::info!(build = %req.id, "build cancelled");
        Ok(Response::new(read_build(
            h,
            &req.id,
            &self.routing.regions(),
        )?))
    }

    type BuildLogsStream = LogStream;

    async fn build_logs(
        &self,
        request: Request<BuildLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let hops = hops(&request);
        let slot = crate::auth::watch_slot(&self.routing.node, &request)?;
        let req = request.into_inner();
        check_id(&req.id)?;
        // Served by the leader, which knows every build submitted so far.
        let h = match self.routing.global_reader(false, hops).await? {
            Route::Local(h) => h.clone(),
            Route::Remote(addr) => {
                let remote = self
                    .client(&addr)?
                    .build_logs(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))?;
                return Ok(Response::new(Box::pin(crate::limits::holding(
                    remote.into_inner(),
                    slot,
                ))));
            }
        };
        read_build(&h, &req.id, &self.routing.regions())?;
        let node = self.routing.node.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = stream_logs(&node, &h, &req.id, req.follow, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Sends the latest attempt's log segments; with `follow`, keeps sending until the build
/// leaves RUNNING (a new attempt restarts the stream with a marker line).
async fn stream_logs(
    node: &crate::node::Node,
    h: &GroupHandle<GlobalTypes>,
    id: &str,
    follow: bool,
    tx: &tokio::sync::mpsc::Sender<Result<LogChunk, Status>>,
) -> Result<(), ApiError> {
    let mut attempt = 0u32;
    let mut next_seq = 0u32;
    loop {
        let Some((state, attempts, region)) = h.state.read(|d| {
            d.state
                .builds
                .get(id)
                .map(|b| (b.state, b.attempts, b.worker_region.clone()))
        }) else {
            return Err(ApiError::NotFound(format!("build {id} does not exist")));
        };
        if attempts != attempt && attempts > 0 {
            if attempt != 0 {
                let note = format!("\n--- attempt {attempts} ---\n").into_bytes();
                if tx
                    .send(Ok(LogChunk {
                        attempt: attempts,
                        data: note,
                    }))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            attempt = attempts;
            next_seq = 0;
        }
        if attempt > 0 {
            if let Some(store) = node.store(&region) {
                let segments = store
                    .log_segments(id, attempt, next_seq)
                    .await
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                for (seq, data) in segments {
                    next_seq = seq + 1;
                    if tx
                        .send(Ok(LogChunk {
                            attempt,
                            data: data.to_vec(),
                        }))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            }
        }
        // The state was read before the segments: once it is past RUNNING, every segment of
        // this attempt was written before it, and has just been sent.
        let running = matches!(state, BuildState::Running | BuildState::Queued);
        if !follow || !running {
            return Ok(());
        }
        // A reader that went away frees its stream's place at once, not at the next chunk.
        tokio::select! {
            _ = tokio::time::sleep(LOG_POLL) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}
