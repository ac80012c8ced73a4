//! Releases (global group) and regions (each region's own group).

use deploy_proto::v1 as pb;
use deploy_proto::v1::region_service_client::RegionServiceClient;
use deploy_proto::v1::release_service_client::ReleaseServiceClient;
use deploy_proto::v1::token_service_client::TokenServiceClient;

use crate::{Client, ClientError};

/// Generates a method that sends its request to one service and returns the reply; `read`
/// ones (and writes safe to repeat) are asked again when the call broke off (see
/// `Client::read_on`); the others are never sent twice.
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
    (once $(#[$doc:meta])* $name:ident, $svc:ident, $req:ty, $reply:ty) => {
        $(#[$doc])*
        ///
        /// Given no request id, it sets one, so a call whose answer was lost is asked again
        /// and applies once.
        pub async fn $name(&self, mut req: $req) -> Result<$reply, ClientError> {
            if req.request_id.is_empty() {
                req.request_id = crate::request_id().unwrap_or_default();
            }
            let id = req.request_id.clone();
            self.write_once(&id, |ch| {
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
        once
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
        once
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
        read
        /// A rack's host reports; the reply carries their goals. Safe to repeat: a report is
        /// the hosts' whole current state, which a second copy only restates.
        report_rack, RegionServiceClient, pb::ReportRackRequest, pb::ReportRackReply
    );

    /// A relay's watch on its rack's goals (see `RegionService.WatchRack`).
    pub async fn watch_rack(
        &self,
        req: pb::WatchRackRequest,
    ) -> Result<tonic::Streaming<pb::ReportRackReply>, ClientError> {
        self.call_on_with(crate::Repeat::Safe, |ch| {
            let req = req.clone();
            async move { RegionServiceClient::new(ch).watch_rack(req).await }
        })
        .await
    }

    rpc!(
        once
        /// Makes an API token (admins only); the reply holds its text, shown only now. Sent
        /// again after its answer was lost, it is refused (AlreadyExists), since the text
        /// went out only in that answer.
        create_token, TokenServiceClient, pb::CreateTokenRequest, pb::CreateTokenReply
    );
    rpc!(
        read list_tokens,
        TokenServiceClient,
        pb::ListTokensRequest,
        pb::ListTokensReply
    );
    rpc!(
        once
        /// Revokes a token: calls made with it are refused from when each node applies it.
        revoke_token, TokenServiceClient, pb::RevokeTokenRequest, pb::TokenInfo
    );

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
