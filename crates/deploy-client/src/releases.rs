//! Releases (global group) and regions (each region's own group).

use deploy_proto::v1 as pb;
use deploy_proto::v1::region_service_client::RegionServiceClient;
use deploy_proto::v1::release_service_client::ReleaseServiceClient;

use crate::{Client, ClientError};

/// Generates a method that sends its request to one service and returns the reply; `read`
/// ones are asked again when the call broke off (see `Client::read_on`).
macro_rules! rpc {
    ($(#[$doc:meta])* $name:ident, $svc:ident, $req:ty, $reply:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, req: $req) -> Result<$reply, ClientError> {
            self.call_on(|ch| {
                let req = req.clone();
                async move { $svc::new(ch).$name(req).await }
            })
            .await
        }
    };
    (read $(#[$doc:meta])* $name:ident, $svc:ident, $req:ty, $reply:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, req: $req) -> Result<$reply, ClientError> {
            self.read_on(|ch| {
                let req = req.clone();
                async move { $svc::new(ch).$name(req).await }
            })
            .await
        }
    };
}

impl Client {
    rpc!(
        /// Decides a release of a SUCCEEDED build.
        create_release, ReleaseServiceClient, pb::CreateReleaseRequest, pb::Release
    );
    rpc!(
        read list_releases,
        ReleaseServiceClient,
        pb::ListReleasesRequest,
        pb::ListReleasesReply
    );
    rpc!(
        /// pause, resume, abort, rollback or promote.
        release_action, ReleaseServiceClient, pb::ReleaseActionRequest, pb::Release
    );
    rpc!(
        read
        /// What a region runs, answered by the region's group.
        region_status, RegionServiceClient, pb::RegionStatusRequest, pb::RegionStatusReply
    );
    rpc!(
        read list_hosts,
        RegionServiceClient,
        pb::ListHostsRequest,
        pb::ListHostsReply
    );
    rpc!(read get_host, RegionServiceClient, pb::GetHostRequest, pb::Host);
    rpc!(
        /// A rack's host reports; the reply carries their goals.
        report_rack, RegionServiceClient, pb::ReportRackRequest, pb::ReportRackReply
    );

    /// A relay's watch on its rack's goals (see `RegionService.WatchRack`).
    pub async fn watch_rack(
        &self,
        req: pb::WatchRackRequest,
    ) -> Result<tonic::Streaming<pb::ReportRackReply>, ClientError> {
        self.call_on(|ch| {
            let req = req.clone();
            async move { RegionServiceClient::new(ch).watch_rack(req).await }
        })
        .await
    }

    pub async fn get_release(&self, id: &str, stale: bool) -> Result<pb::Release, ClientError> {
        let req = pb::GetReleaseRequest {
            id: id.into(),
            stale,
        };
        self.read_on(|ch| {
            let req = req.clone();
            async move { ReleaseServiceClient::new(ch).get_release(req).await }
        })
        .await
    }
}
