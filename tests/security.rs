//! A secure cluster (no `insecure = true`) of real processes: everything travels over mutual
//! TLS with one cluster CA; plain connections and certificates of another CA are refused,
//! with a clear log line; internal calls are for the cluster's own processes only.

use std::time::Duration;

use deploy_proto::v1 as pb;
use deploy_proto::v1::raft_service_client::RaftServiceClient;
use test_harness::releases::{all_at_once, release, web_builds, T};
use test_harness::{wait_until, ProcessCluster, Spec};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn secure_spec() -> Spec {
    Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 2)
        .secure()
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
async fn channel(
    addr: &str,
    ca: &[u8],
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
}

async fn node_status(ch: tonic::transport::Channel) -> Result<pb::NodeStatusReply, tonic::Status> {
    let mut c = RaftServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::NodeStatusRequest {
        group: "global".into(),
    });
    req.set_timeout(Duration::from_secs(3));
    c.node_status(req).await.map(tonic::Response::into_inner)
}

fn read(path: std::path::PathBuf) -> anyhow::Result<Vec<u8>> {
    Ok(std::fs::read(path)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_cluster_builds_and_releases_over_mutual_tls() -> anyhow::Result<()> {
    let mut c = ProcessCluster::start_spec(secure_spec())?;
    let client = c.client()?;
    for h in ["east-1-h1", "east-1-h2"] {
        c.start_agent(h, None)?;
    }
    let ids = web_builds(&client, c.dir(), 64 * 1024, &[("v1", true)]).await?;
    let done = release(&client, &ids[0], "east", all_at_once(2)).await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    // The worker, relays and agents spoke TLS too: nothing was refused along the way.
    for p in ["g1", "east-1", "east-rack-1-relay"] {
        assert!(
            !c.log(p).contains("refused a TLS connection"),
            "{p} refused a peer:\n{}",
            c.log(p)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_connections_and_foreign_certificates_are_refused_and_logged() -> anyhow::Result<()> {
    let c = ProcessCluster::start_spec(secure_spec())?;
    let certs = test_harness::certs_dir(c.dir());
    let ca = read(certs.join("ca.pem"))?;
    let g1 = c.addr("g1")?.to_string();
    wait_until(T, "the node to serve TLS", || async {
        let ch = channel(&g1, &ca, None).await.ok()?;
        // Answered (if only to refuse): the listener is up.
        Some(node_status(ch).await.err().map(|s| s.code()))
    })
    .await?;

    // Plain TCP: the client cannot talk to it, and the node says why.
    let plain = deploy_client::Client::new([g1.as_str()])?.with_timeout(Duration::from_secs(3));
    assert!(plain.cluster_status().await.is_err());
    wait_until(T, "the node to log the plain client", || async {
        let log = c.log("g1");
        (log.contains("refused a TLS connection") && log.contains("plain-TCP")).then_some(())
    })
    .await?;

    // A certificate of another CA, even with the name of a real node: refused.
    let other = tempfile::tempdir()?;
    deploy_tls::certs::init_ca(other.path(), "impostor")?;
    deploy_tls::certs::issue(other.path(), "g2", &["127.0.0.1".into()])?;
    let forged = (
        read(other.path().join("g2.pem"))?,
        read(other.path().join("g2.key"))?,
    );
    let refused = match channel(&g1, &ca, Some(forged)).await {
        Err(_) => true,
        Ok(ch) => node_status(ch).await.is_err(),
    };
    assert!(refused, "a certificate of another CA was let in");
    wait_until(T, "the node to log the foreign certificate", || async {
        c.log("g1")
            .contains("not signed by this cluster's CA")
            .then_some(())
    })
    .await?;

    // No certificate: the API may be reached (tokens say who calls), internal calls not.
    let ch = channel(&g1, &ca, None).await?;
    let e = node_status(ch)
        .await
        .expect_err("Raft status without a certificate");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("certificate"), "{}", e.message());

    // A host's certificate is the cluster's, but Raft is for nodes.
    let host = (
        read(certs.join("east-1-h1.pem"))?,
        read(certs.join("east-1-h1.key"))?,
    );
    let ch = channel(&g1, &ca, Some(host)).await?;
    let e = node_status(ch).await.expect_err("Raft status from a host");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(e.message().contains("host agent"), "{}", e.message());

    // A node's certificate: answered.
    let node = (read(certs.join("g1.pem"))?, read(certs.join("g1.key"))?);
    let ch = channel(&g1, &ca, Some(node)).await?;
    assert_eq!(node_status(ch).await?.node_id, "g1");

    // Artifacts over HTTP: for the cluster's processes only.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let digest = format!("sha256:{}", "a".repeat(64));
    let east = c.addr("east-1")?.to_string();
    let r = http
        .get(format!("https://{east}/v1/manifests/{digest}"))
        .send()
        .await?;
    assert_eq!(r.status(), 403, "{:?}", r.text().await);

    // A relay wants a certificate at the handshake.
    let relay = c.addr("east-rack-1-relay")?.to_string();
    let r = http
        .get(format!("https://{relay}/v1/goal?host=east-1-h1&wait_ms=0"))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a relay answered a client with no certificate: {r:?}"
    );
    Ok(())
}
