//! The artifact API: garbage collection of the regions' stores by the retention policy.
//! It runs on the global leader, which knows every build.

use deploy_artifact::gc::{kept_artifacts, plan, BuildRef};
use deploy_proto::v1::artifact_service_client::ArtifactServiceClient;
use deploy_proto::v1::artifact_service_server::ArtifactService;
use deploy_proto::v1::{CollectGarbageReply, CollectGarbageRequest, StoreGc};
use deploy_raft::GlobalTypes;
use deploy_state::builds::BuildState;
use deploy_types::GroupName;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::error::ApiError;
use crate::routing::{forwarded, hops, Route, Routing};

/// Each service's newest releases whose artifacts are kept.
const RELEASES_KEPT_PER_SERVICE: usize = 3;

pub struct ArtifactApi {
    routing: Routing,
}

impl ArtifactApi {
    pub fn new(routing: Routing) -> Self {
        Self { routing }
    }
}

#[tonic::async_trait]
impl ArtifactService for ArtifactApi {
    #[instrument(skip_all, fields(dry_run = request.get_ref().dry_run))]
    async fn collect_garbage(
        &self,
        request: Request<CollectGarbageRequest>,
    ) -> Result<Response<CollectGarbageReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let h = match self
            .routing
            .route::<GlobalTypes>(&GroupName::Global, hops)
            .await?
        {
            Route::Remote(addr) => {
                let ch = self.routing.channel(&addr)?;
                return ArtifactServiceClient::new(ch)
                    .collect_garbage(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s));
            }
            Route::Local(h) => h,
        };
        h.linearizable().await.map_err(|e| match e {
            Ok(_) => ApiError::Unavailable("leadership moved; retry".into()),
            Err(e) => e,
        })?;
        let node = &self.routing.node;
        let builds: Vec<BuildRef> = h.state.read(|d| {
            d.state
                .builds
                .by_seq
                .values()
                .map(|b| BuildRef {
                    service: b.service.clone(),
                    seq: b.seq,
                    succeeded: b.state == BuildState::Succeeded,
                    in_flight: matches!(b.state, BuildState::Running | BuildState::Replicating),
                    artifact_digest: b.artifact_digest,
                })
                .collect()
        });
        // What releases put (or may put back) on hosts stays, whatever its age.
        let referenced = h.state.read(|d| {
            d.state
                .releases
                .referenced_artifacts(RELEASES_KEPT_PER_SERVICE)
        });
        let kept = kept_artifacts(
            &builds,
            node.config.builds.keep_per_service as usize,
            &referenced,
        );
        let grace_ms = node.config.builds.gc_grace_secs.saturating_mul(1000);
        let mut stores = Vec::new();
        for (region, store) in &node.stores {
            let contents = store
                .contents(grace_ms)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            let p = plan(&kept, &contents);
            let staging = store
                .stale_staging(grace_ms, req.dry_run)
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            if !req.dry_run {
                store
                    .apply_gc(&p)
                    .await
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                info!(%region, manifests = p.delete_manifests.len(), chunks = p.delete_chunks.len(), bytes = p.bytes_freed, "collected garbage");
            }
            stores.push(StoreGc {
                region: region.clone(),
                delete_manifests: p.delete_manifests.iter().map(ToString::to_string).collect(),
                delete_chunks: p.delete_chunks.len() as u32,
                bytes_freed: p.bytes_freed + staging.iter().map(|(_, n)| n).sum::<u64>(),
                staging_files: staging.len() as u32,
                kept_manifests: p.kept_manifests as u32,
                kept_chunks: p.kept_chunks as u32,
            });
        }
        Ok(Response::new(CollectGarbageReply {
            stores,
            kept_artifacts: kept.iter().map(ToString::to_string).collect(),
            dry_run: req.dry_run,
        }))
    }
}
