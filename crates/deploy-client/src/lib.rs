//! Client library for the `deploy.v1` API.
//!
//! A [`Client`] holds a list of endpoints. It connects to the first that answers and moves to
//! the next when one stops answering; any node can take any request, because the coordinator
//! forwards writes and linearizable reads to the leader of the group they name. Errors say
//! which endpoint failed and how, so a CLI can print them as one line.
//!
//! This crate must not depend on server crates: it is what CI systems link against.

mod releases;

use std::sync::Mutex;
use std::time::Duration;

use deploy_proto::v1::build_service_client::BuildServiceClient;
use deploy_proto::v1::cluster_service_client::ClusterServiceClient;
use deploy_proto::v1::{
    AddNodeRequest, ClusterStatus, ClusterStatusRequest, GetMetaReply, GetMetaRequest,
    MembershipReply, RemoveNodeRequest, SetMetaReply, SetMetaRequest,
};
use deploy_proto::v1::{
    Build, BuildLogsRequest, CancelBuildRequest, GetBuildRequest, ListBuildsReply,
    ListBuildsRequest, LogChunk, SubmitBuildRequest,
};
use tonic::transport::{Channel, Endpoint};

pub use tonic::transport::ClientTlsConfig;
pub use tonic::Code;

/// TLS settings that trust only the CA in `ca_pem` and present no certificate: a user's
/// client, whose token says who it is.
pub fn trusting(ca_pem: &[u8]) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
}

/// The nodes `deployd dev` serves (cluster-config/local.toml), used when no endpoint is
/// given: the global nodes first, then each region's, so a region still answers while the
/// global group is down.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7001,http://127.0.0.1:7002,http://127.0.0.1:7003,http://127.0.0.1:7011,http://127.0.0.1:7012,http://127.0.0.1:7013,http://127.0.0.1:7021,http://127.0.0.1:7022,http://127.0.0.1:7023";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("cannot reach the cluster at {endpoints}: {reason}")]
    Unavailable { endpoints: String, reason: String },
    #[error("{endpoint}: {code:?}: {message}")]
    Api {
        endpoint: String,
        code: tonic::Code,
        message: String,
    },
}

impl ClientError {
    /// The gRPC code the cluster answered with, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether a read that failed so may succeed if asked again: the connection broke, or
    /// the cluster had no leader yet. A refusal (not found, invalid) would only repeat.
    pub fn read_may_succeed_again(&self) -> bool {
        match self {
            ClientError::Unavailable { .. } => true,
            ClientError::Api { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
                    | tonic::Code::Aborted
            ),
            ClientError::BadEndpoint { .. } => false,
        }
    }

    /// True when the cluster could not be reached or had no leader to serve the request.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Unavailable { .. } => true,
            ClientError::Api { code, .. } => *code == tonic::Code::Unavailable,
            ClientError::BadEndpoint { .. } => false,
        }
    }
}

/// Adds the caller's bearer token to every request.
#[derive(Clone, Default)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The channel every call goes through: the connection, with the token added.
pub type Chan = tonic::service::interceptor::InterceptedService<Channel, Auth>;

/// A connection to a deploy cluster through any of its nodes.
pub struct Client {
    endpoints: Vec<Endpoint>,
    connected: Mutex<Option<(usize, Channel)>>,
    timeout: Duration,
    auth: Auth,
}

fn normalize(endpoint: &str, tls: bool) -> String {
    let e = endpoint.trim();
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

impl Client {
    /// A client over `endpoints` (`http://host:port` or `host:port`), tried in order.
    pub fn new<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> Result<Self, ClientError> {
        Self::build(endpoints, None)
    }

    /// A client over TLS (`host:port` means `https://host:port`): `tls` names the CA to trust
    /// and, for a process of the cluster, the certificate to present.
    pub fn secure<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        tls: tonic::transport::ClientTlsConfig,
    ) -> Result<Self, ClientError> {
        Self::build(endpoints, Some(tls))
    }

    fn build<S: AsRef<str>>(
        endpoints: impl IntoIterator<Item = S>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, ClientError> {
        let mut out = Vec::new();
        for e in endpoints {
            let raw = e.as_ref();
            if raw.trim().is_empty() {
                continue;
            }
            let url = normalize(raw, tls.is_some());
            let bad = |reason: String| ClientError::BadEndpoint {
                endpoint: raw.to_string(),
                reason,
            };
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| bad(err.to_string()))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            if let Some(t) = &tls {
                endpoint = endpoint
                    .tls_config(t.clone())
                    .map_err(|err| bad(err.to_string()))?;
            }
            out.push(endpoint);
        }
        if out.is_empty() {
            return Err(ClientError::BadEndpoint {
                endpoint: String::new(),
                reason: "no endpoint given".into(),
            });
        }
        Ok(Self {
            endpoints: out,
            connected: Mutex::new(None),
            timeout: Duration::from_secs(15),
            auth: Auth::default(),
        })
    }

    /// Sends `token` as the bearer token of every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value =
            format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| ClientError::BadEndpoint {
                    endpoint: String::new(),
                    reason: "the token holds characters a header cannot carry".into(),
                })?;
        self.auth = Auth(Some(value));
        Ok(self)
    }

    fn chan(&self, ch: Channel) -> Chan {
        tonic::service::interceptor::InterceptedService::new(ch, self.auth.clone())
    }

    /// A client from a comma-separated endpoint list, as `--endpoint` and `DEPLOY_ENDPOINT` give it.
    pub fn from_list(list: &str) -> Result<Self, ClientError> {
        Self::new(list.split(','))
    }

    /// Sets the per-call deadline (default 15 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn endpoint_list(&self) -> String {
        self.endpoints
            .iter()
            .map(|e| e.uri().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The current channel, connecting to the first endpoint that answers.
    async fn channel(&self, skip: Option<usize>) -> Result<(usize, Channel), ClientError> {
        if skip.is_none() {
            if let Some(c) = self
                .connected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Ok(c);
            }
        }
        let start = skip.map(|s| s + 1).unwrap_or(0);
        let mut last = String::new();
        for k in 0..self.endpoints.len() {
            let i = (start + k) % self.endpoints.len();
            match self.endpoints[i].connect().await {
                Ok(ch) => {
                    *self.connected.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((i, ch.clone()));
                    return Ok((i, ch));
                }
                Err(e) => {
                    last = match std::error::Error::source(&e) {
                        Some(src) => format!("{e}: {src}"),
                        None => e.to_string(),
                    };
                    tracing::debug!(endpoint = %self.endpoints[i].uri(), error = %last, "endpoint did not answer");
                }
            }
        }
        Err(ClientError::Unavailable {
            endpoints: self.endpoint_list(),
            reason: last,
        })
    }

    /// Runs a write that is not safe to repeat (see [`Client::call_on_with`]).
    pub(crate) async fn call_on<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Chan) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_on_with(Repeat::Never, f).await
    }

    /// Runs one call on a channel, retrying briefly when the cluster answers Unavailable (no
    /// leader yet, leadership moving: the server says so only when the request was not
    /// applied). When the connection fails, the call moves to the next endpoint only if it
    /// is safe to send again: `Repeat::Safe`, or the connection was refused, so the request
    /// never left. A write whose connection broke mid-call may have been applied: it is
    /// never sent twice, and its error says so.
    pub(crate) async fn call_on_with<T, F, Fut>(
        &self,
        repeat: Repeat,
        f: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Chan) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (mut index, mut channel) = self.channel(None).await?;
        let mut tries = 0;
        let mut unavailable = 0;
        let mut shed = 0;
        loop {
            let result = tokio::time::timeout(self.timeout, f(self.chan(channel.clone()))).await;
            let endpoint = self.endpoints[index].uri().to_string();
            match result {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(status)) => {
                    // A transport failure (the node died, the connection broke) is a locally
                    // made status carrying its cause; a status sent by a server has none.
                    let transport = std::error::Error::source(&status).is_some();
                    tries += 1;
                    if transport {
                        // Whatever follows, the next call starts from a fresh connection.
                        *self.connected.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    let resend = repeat == Repeat::Safe || never_sent(&status);
                    if transport && resend && tries < self.endpoints.len() {
                        (index, channel) = self.channel(Some(index)).await?;
                        continue;
                    }
                    if transport && !resend {
                        return Err(ClientError::Api {
                            endpoint,
                            code: tonic::Code::Unavailable,
                            message: format!(
                                "the connection broke during the call ({}): it may or may not \
                                 have been applied, and was not sent again",
                                status.message()
                            ),
                        });
                    }
                    if !transport && status.code() == tonic::Code::Unavailable && unavailable < 3 {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(300 * unavailable)).await;
                        continue;
                    }
                    // The node shed the call before doing anything (this client, or the node,
                    // is at its limit): safe to ask again, after a pause that spreads retries.
                    if status.code() == tonic::Code::ResourceExhausted && shed < 3 {
                        shed += 1;
                        let jitter = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| u64::from(d.subsec_nanos()) % 100);
                        tokio::time::sleep(Duration::from_millis(250 * shed + jitter)).await;
                        continue;
                    }
                    return Err(ClientError::Api {
                        endpoint,
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
                Err(_) => {
                    return Err(ClientError::Api {
                        endpoint,
                        code: tonic::Code::DeadlineExceeded,
                        message: format!("no answer within {:?}", self.timeout),
                    })
                }
            }
        }
    }

    /// Runs a write named by request id `id`: asked again as a read is when the call broke
    /// off (the cluster applies it once), or, with no id (no randomness to make one), sent
    /// only once.
    pub(crate) async fn write_once<T, F, Fut>(&self, id: &str, f: F) -> Result<T, ClientError>
    where
        F: Fn(Chan) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if id.is_empty() {
            self.call_on(f).await
        } else {
            self.read_on(f).await
        }
    }

    /// Runs a call that is safe to repeat (a read, or a write the cluster deduplicates by its
    /// request id or its key): as [`Client::call_on_with`] with `Repeat::Safe`, and also
    /// again, with a growing pause and within the call's deadline, when it failed in a way
    /// that says nothing about the cluster's state (the node, or the leader it forwarded to,
    /// went away mid-call). Other writes are never repeated this way.
    pub(crate) async fn read_on<T, F, Fut>(&self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Chan) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            match self.call_on_with(Repeat::Safe, &f).await {
                Err(e)
                    if e.read_may_succeed_again() && started.elapsed() + pause < self.timeout =>
                {
                    tracing::debug!(error = %e, "read failed mid-call; reading again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                r => return r,
            }
        }
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.read_on(|ch| async move {
            ClusterServiceClient::new(ch)
                .status(ClusterStatusRequest {})
                .await
        })
        .await
    }

    pub async fn add_node(
        &self,
        group: &str,
        node_id: &str,
        addr: &str,
    ) -> Result<MembershipReply, ClientError> {
        let req = AddNodeRequest {
            group: group.into(),
            node_id: node_id.into(),
            addr: addr.into(),
            request_id: request_id().unwrap_or_default(),
        };
        self.write_once(&req.request_id, |ch| {
            let req = req.clone();
            async move { ClusterServiceClient::new(ch).add_node(req).await }
        })
        .await
    }

    pub async fn remove_node(
        &self,
        group: &str,
        node_id: &str,
    ) -> Result<MembershipReply, ClientError> {
        let req = RemoveNodeRequest {
            group: group.into(),
            node_id: node_id.into(),
            request_id: request_id().unwrap_or_default(),
        };
        self.write_once(&req.request_id, |ch| {
            let req = req.clone();
            async move { ClusterServiceClient::new(ch).remove_node(req).await }
        })
        .await
    }

    /// Sets (`Some`) or deletes (`None`) a metadata key of a group.
    pub async fn set_meta(
        &self,
        group: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<SetMetaReply, ClientError> {
        let req = SetMetaRequest {
            group: group.into(),
            key: key.into(),
            value: value.map(Into::into),
            request_id: request_id().unwrap_or_default(),
        };
        self.write_once(&req.request_id, |ch| {
            let req = req.clone();
            async move { ClusterServiceClient::new(ch).set_meta(req).await }
        })
        .await
    }

    /// Submits a build; safe to repeat, a submission of the same (service, repo, commit)
    /// returning the build it already made.
    pub async fn submit_build(
        &self,
        service: &str,
        repo: &str,
        commit: &str,
    ) -> Result<Build, ClientError> {
        let req = SubmitBuildRequest {
            service: service.into(),
            repo: repo.into(),
            commit: commit.into(),
        };
        self.read_on(|ch| {
            let req = req.clone();
            async move { BuildServiceClient::new(ch).submit_build(req).await }
        })
        .await
    }

    pub async fn get_build(&self, id: &str, stale: bool) -> Result<Build, ClientError> {
        let req = GetBuildRequest {
            id: id.into(),
            stale,
        };
        self.read_on(|ch| {
            let req = req.clone();
            async move { BuildServiceClient::new(ch).get_build(req).await }
        })
        .await
    }

    pub async fn list_builds(
        &self,
        req: ListBuildsRequest,
    ) -> Result<ListBuildsReply, ClientError> {
        self.read_on(|ch| {
            let req = req.clone();
            async move { BuildServiceClient::new(ch).list_builds(req).await }
        })
        .await
    }

    pub async fn cancel_build(&self, id: &str) -> Result<Build, ClientError> {
        let req = CancelBuildRequest {
            id: id.into(),
            request_id: request_id().unwrap_or_default(),
        };
        self.write_once(&req.request_id, |ch| {
            let req = req.clone();
            async move { BuildServiceClient::new(ch).cancel_build(req).await }
        })
        .await
    }

    /// Garbage-collects the regions' stores (or, with `dry_run`, says what would go). Safe
    /// to repeat without a request id: it removes what nothing references, which a second
    /// pass finds again (less of it), so it is asked again as a read is.
    pub async fn collect_garbage(
        &self,
        dry_run: bool,
    ) -> Result<deploy_proto::v1::CollectGarbageReply, ClientError> {
        self.read_on(|ch| async move {
            deploy_proto::v1::artifact_service_client::ArtifactServiceClient::new(ch)
                .collect_garbage(deploy_proto::v1::CollectGarbageRequest { dry_run })
                .await
        })
        .await
    }

    /// The build's log as a stream of chunks; with `follow`, until the build ends.
    pub async fn build_logs(
        &self,
        id: &str,
        follow: bool,
    ) -> Result<tonic::Streaming<LogChunk>, ClientError> {
        let (index, channel) = self.channel(None).await?;
        let req = BuildLogsRequest {
            id: id.into(),
            follow,
        };
        BuildServiceClient::new(self.chan(channel))
            .build_logs(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::Api {
                endpoint: self.endpoints[index].uri().to_string(),
                code: s.code(),
                message: s.message().to_string(),
            })
    }

    pub async fn get_meta(
        &self,
        group: &str,
        key: &str,
        stale: bool,
    ) -> Result<GetMetaReply, ClientError> {
        let req = GetMetaRequest {
            group: group.into(),
            key: key.into(),
            stale,
        };
        self.read_on(|ch| {
            let req = req.clone();
            async move { ClusterServiceClient::new(ch).get_meta(req).await }
        })
        .await
    }
}

/// Whether a call may be sent again after its connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// A read, or a write the cluster deduplicates (by its key or its request id).
    Safe,
    /// Any other write: sent again only if it provably never left.
    Never,
}

/// Whether a failed call's request provably never reached a server: its connection was
/// refused (a dead node's port) while it was being made, or hyper dropped it unsent because
/// the connection had already closed. A broken pipe or a reset proves nothing.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_canceled())
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A fresh request id: 128 random bits, hex; `None` if the system has no randomness to
/// give (a made-up id could collide with another call's and be taken for its repeat).
pub fn request_id() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).ok()?;
    Some(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Questions about a [`ClusterStatus`], for tools and tests.
#[derive(Debug, Clone)]
pub struct ClusterStatusView(pub ClusterStatus);

impl ClusterStatusView {
    fn group(&self, name: &str) -> Option<&deploy_proto::v1::GroupStatus> {
        self.0.groups.iter().find(|g| g.name == name)
    }

    /// The group's leader, if a member reports one.
    pub fn leader(&self, group: &str) -> Option<String> {
        self.group(group)
            .map(|g| g.leader.clone())
            .filter(|l| !l.is_empty())
    }

    pub fn term(&self, group: &str) -> u64 {
        self.group(group).map(|g| g.term).unwrap_or(0)
    }

    pub fn members(&self, group: &str) -> Vec<deploy_proto::v1::MemberStatus> {
        self.group(group)
            .map(|g| g.members.clone())
            .unwrap_or_default()
    }

    /// Some member of `group` in `role`.
    pub fn member_with_role(&self, group: &str, role: deploy_proto::v1::Role) -> Option<String> {
        self.members(group)
            .into_iter()
            .find(|m| m.role() == role)
            .map(|m| m.id)
    }

    /// True when the group has a leader and every member answered with the same applied index.
    pub fn converged(&self, group: &str) -> bool {
        let members = self.members(group);
        self.leader(group).is_some()
            && !members.is_empty()
            && members.iter().all(|m| {
                m.role() != deploy_proto::v1::Role::Unreachable
                    && m.last_applied == members[0].last_applied
            })
    }
}

#[cfg(test)]
mod repeat_tests;
