//! Talking to a secure [`crate::Spec`]'s cluster as an API client would: a TLS channel that
//! trusts the cluster's CA, requests carrying a bearer token, and a snapshot of everything a
//! refused call could have changed.

use std::time::Duration;

use deploy_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// `msg` as a request with `token` (none: no `authorization` header) and a 20 s deadline.
pub fn bearer<M, S: AsRef<str>>(msg: M, token: Option<S>) -> tonic::Request<M> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(20));
    if let Some(t) = token {
        if let Ok(v) = format!("Bearer {}", t.as_ref()).parse() {
            r.metadata_mut().insert("authorization", v);
        }
    }
    r
}

/// A TLS channel to `addr` trusting the CA of the cluster under `root`, with no client
/// certificate: what an API client has. Connects at once.
pub async fn api_channel(root: &std::path::Path, addr: &str) -> anyhow::Result<Channel> {
    let ca = std::fs::read(crate::certs_dir(root).join("ca.pem"))?;
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?)
}

/// Everything a refused call could have changed, as text to compare: builds, releases,
/// tokens, the global `owner` key, every group's members, and what each of `regions` knows
/// of its hosts (not how long ago they last reported).
pub async fn snapshot(client: &deploy_client::Client, regions: &[&str]) -> anyhow::Result<String> {
    let builds = client.list_builds(pb::ListBuildsRequest::default()).await?;
    let releases = client
        .list_releases(pb::ListReleasesRequest::default())
        .await?;
    let tokens = client.list_tokens(pb::ListTokensRequest {}).await?;
    let meta = client.get_meta("global", "owner", false).await?.value;
    let status = client.cluster_status().await?;
    let members: Vec<_> = status
        .groups
        .iter()
        .flat_map(|g| {
            g.members
                .iter()
                .map(move |m| format!("{}:{}", g.name, m.id))
        })
        .collect();
    let mut hosts = Vec::new();
    for region in regions {
        let list = client
            .list_hosts(pb::ListHostsRequest {
                region: region.to_string(),
                ..Default::default()
            })
            .await?;
        hosts.extend(list.hosts.into_iter().map(|h| (h.host, h.rack, h.services)));
    }
    Ok(serde_json::to_string_pretty(&(
        builds, releases, tokens, meta, members, hosts,
    ))?)
}

/// The transport process `id` of `c`'s cluster has: its certificate, on a secure cluster.
pub fn transport_of(c: &crate::ProcessCluster, id: &str) -> anyhow::Result<deploy_tls::Transport> {
    let config = deploy_types::ClusterConfig::load(c.config_path())?;
    Ok(deploy_tls::Transport::of(&config, id)?)
}

/// A TLS channel to `addr` as process `id` of `c`'s cluster, with its certificate: what that
/// process (or an attacker holding its key) can say. Connects lazily.
pub fn channel_as(c: &crate::ProcessCluster, addr: &str, id: &str) -> anyhow::Result<Channel> {
    let deploy_tls::Transport::Tls(m) = transport_of(c, id)? else {
        anyhow::bail!("the cluster is not secure");
    };
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(m.tonic_client())?
        .connect_timeout(Duration::from_secs(3))
        .connect_lazy())
}

/// Starts `spec`'s cluster of real processes: the cluster, an admin client, and the admin
/// token's text.
pub fn start_with_admin(
    spec: crate::Spec,
) -> anyhow::Result<(crate::ProcessCluster, deploy_client::Client, String)> {
    let c = crate::ProcessCluster::start_spec(spec)?;
    let admin = c.client()?;
    let token = crate::admin_token(c.dir())?;
    Ok((c, admin, token))
}
