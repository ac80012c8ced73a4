//! Nodes of one process serving real gRPC on loopback: several groups side by side, the
//! public API's forwarding, and membership changes.

use std::time::Duration;

use deploy_client::ClientError;
use deploy_types::GroupName;
use test_harness::{wait_until, GrpcCluster};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_in_one_process_stay_independent() -> anyhow::Result<()> {
    let mut c = GrpcCluster::start(3, &[("east", 3)]).await?;
    let client = c.client()?;
    let region = GroupName::region("east")?;

    let status = wait_until(T, "leaders in both groups", || async {
        let s = deploy_client::ClusterStatusView(client.cluster_status().await.ok()?);
        (s.leader("global").is_some() && s.leader("region/east").is_some()).then_some(s)
    })
    .await?;
    let global_leader = status.leader("global").unwrap_or_default();
    let region_leader = status.leader("region/east").unwrap_or_default();
    let region_term = status.term("region/east");
    client.set_meta("region/east", "before", Some("1")).await?;

    // Kill the global leader: the region keeps its leader and term, and keeps committing.
    c.stop_node(&global_leader).await?;
    let client = c.client()?;
    for i in 0..5 {
        client
            .set_meta("region/east", &format!("k{i}"), Some("v"))
            .await?;
    }
    let node = c.node(&region_leader)?;
    let m = node.node.group(&region).map(|g| g.metrics());
    assert_eq!(
        m.as_ref().map(|m| m.current_term),
        Some(region_term),
        "the region's term moved"
    );
    assert_eq!(
        m.and_then(|m| m.current_leader),
        Some(deploy_types::node_id_of(&region_leader))
    );

    // Meanwhile the global group elects a new leader among the two survivors.
    let s = wait_until(T, "a new global leader", || async {
        let s = deploy_client::ClusterStatusView(client.cluster_status().await.ok()?);
        s.leader("global")
            .filter(|l| *l != global_leader)
            .map(|_| s)
    })
    .await?;
    assert_eq!(
        s.leader("region/east").as_deref(),
        Some(region_leader.as_str())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_forwards_writes_and_linearizable_reads_to_the_leader() -> anyhow::Result<()> {
    let c = GrpcCluster::start(3, &[("east", 3)]).await?;
    let any = c.client()?;
    wait_until(T, "every group to have a leader", || async {
        let s = deploy_client::ClusterStatusView(any.cluster_status().await.ok()?);
        (s.leader("global").is_some() && s.leader("region/east").is_some()).then_some(())
    })
    .await?;
    // Every node, including nodes that do not host the group, takes writes and reads of it.
    for (i, name) in c.addrs.keys().enumerate() {
        let client = c.client_of(name)?;
        for group in ["global", "region/east"] {
            let key = format!("from-{name}");
            let set = client.set_meta(group, &key, Some(&i.to_string())).await?;
            assert!(set.log_index > 0);
            let got = client.get_meta(group, &key, false).await?;
            assert_eq!(
                got.value.as_deref(),
                Some(i.to_string().as_str()),
                "{group} via {name}"
            );
            assert!(
                got.applied_index >= set.log_index,
                "a linearizable read saw an older state"
            );
        }
    }
    // A stale read from a follower eventually shows the write too.
    let s = deploy_client::ClusterStatusView(any.cluster_status().await?);
    let follower = s
        .member_with_role("global", deploy_proto::v1::Role::Follower)
        .unwrap_or_default();
    let fc = c.client_of(&follower)?;
    wait_until(T, "the follower to apply", || async {
        let r = fc.get_meta("global", "from-g1", true).await.ok()?;
        r.value.map(|_| ())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_the_field_named_and_change_nothing() -> anyhow::Result<()> {
    let c = GrpcCluster::start(3, &[]).await?;
    let client = c.client()?;
    let code = |r: Result<_, ClientError>| match r {
        Err(ClientError::Api { code, message, .. }) => (code, message),
        Err(e) => (deploy_client::Code::Unknown, e.to_string()),
        Ok(_) => (deploy_client::Code::Unknown, "accepted".into()),
    };
    let (k, m) = code(client.set_meta("galaxy", "k", Some("v")).await.map(|_| ()));
    assert_eq!(k, deploy_client::Code::InvalidArgument, "{m}");
    assert!(m.contains("group"), "{m}");
    let (k, m) = code(
        client
            .set_meta("region/nowhere", "k", Some("v"))
            .await
            .map(|_| ()),
    );
    assert_eq!(k, deploy_client::Code::NotFound, "{m}");
    let (k, m) = code(
        client
            .set_meta("global", "bad key", Some("v"))
            .await
            .map(|_| ()),
    );
    assert_eq!(k, deploy_client::Code::InvalidArgument, "{m}");
    assert!(m.contains("key"), "{m}");
    let big = "x".repeat(deploy_state::MAX_META_VALUE_BYTES + 1);
    let (k, m) = code(client.set_meta("global", "k", Some(&big)).await.map(|_| ()));
    assert_eq!(k, deploy_client::Code::InvalidArgument, "{m}");
    let (k, m) = code(
        client
            .add_node("global", "Bad_Name", "127.0.0.1:1")
            .await
            .map(|_| ()),
    );
    assert_eq!(k, deploy_client::Code::InvalidArgument, "{m}");
    let (k, m) = code(
        client
            .add_node("global", "x1", "not-an-address")
            .await
            .map(|_| ()),
    );
    assert_eq!(k, deploy_client::Code::InvalidArgument, "{m}");
    assert!(m.contains("addr"), "{m}");
    // Nothing was written.
    assert_eq!(client.get_meta("global", "k", false).await?.value, None);
    let s = deploy_client::ClusterStatusView(client.cluster_status().await?);
    assert_eq!(s.members("global").len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_grows_a_group_and_remove_node_shrinks_it() -> anyhow::Result<()> {
    let mut c = GrpcCluster::start_with_spares(3, &[], 1).await?;
    let client = c.client_of("g1")?;
    wait_until(T, "a global leader", || async {
        let s = deploy_client::ClusterStatusView(client.cluster_status().await.ok()?);
        s.leader("global")
    })
    .await?;
    for i in 0..5 {
        client
            .set_meta("global", &format!("k{i}"), Some("v"))
            .await?;
    }
    let s1 = c.addrs["s1"].clone();
    let reply = client.add_node("global", "s1", &s1).await?;
    assert!(
        reply.members.iter().any(|m| m.id == "s1" && m.voter),
        "{reply:?}"
    );
    assert_eq!(reply.members.iter().filter(|m| m.voter).count(), 4);

    // The new voter has the whole state.
    let spare = c.node("s1")?.node.global().cloned();
    let spare = spare.ok_or_else(|| anyhow::anyhow!("s1 does not host global"))?;
    let last = reply.log_index;
    spare
        .raft
        .wait(Some(T))
        .applied_index_at_least(Some(last), "s1 applied the membership")
        .await?;
    assert!(spare.get_meta("k4").0.is_some());

    // Adding it again is refused; removing a voter shrinks the group back to three.
    let again = client.add_node("global", "s1", &s1).await;
    assert!(
        matches!(
            again,
            Err(ClientError::Api {
                code: deploy_client::Code::FailedPrecondition,
                ..
            })
        ),
        "{again:?}"
    );
    let reply = client.remove_node("global", "g3").await?;
    assert_eq!(
        reply.members.iter().filter(|m| m.voter).count(),
        3,
        "{reply:?}"
    );
    assert!(!reply.members.iter().any(|m| m.id == "g3"));
    c.stop_node("g3").await?;
    // The group still commits with g3 gone for good.
    client.set_meta("global", "after", Some("1")).await?;
    let missing = client.remove_node("global", "g3").await;
    assert!(
        matches!(
            missing,
            Err(ClientError::Api {
                code: deploy_client::Code::NotFound,
                ..
            })
        ),
        "{missing:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_raft_messages_are_refused_and_change_nothing() -> anyhow::Result<()> {
    use deploy_proto::v1::raft_service_client::RaftServiceClient;
    use deploy_proto::v1::RaftRequest;

    let c = GrpcCluster::start(3, &[]).await?;
    let client = c.client()?;
    let before = wait_until(T, "a converged global group", || async {
        let s = deploy_client::ClusterStatusView(client.cluster_status().await.ok()?);
        s.converged("global").then_some(s)
    })
    .await?;
    let mut raft = RaftServiceClient::connect(format!("http://{}", c.addrs["g2"])).await?;
    let cases: [(&str, &[u8], tonic::Code); 5] = [
        ("global", b"not json", tonic::Code::InvalidArgument),
        ("global", b"{}", tonic::Code::InvalidArgument),
        ("global", &[0xff; 64], tonic::Code::InvalidArgument),
        ("region/elsewhere", b"{}", tonic::Code::NotFound),
        ("../../etc", b"{}", tonic::Code::InvalidArgument),
    ];
    for (group, payload, want) in cases {
        let req = || RaftRequest {
            group: group.into(),
            payload: payload.to_vec(),
        };
        for got in [
            raft.append_entries(req()).await.map(|_| ()),
            raft.vote(req()).await.map(|_| ()),
            raft.install_snapshot(req()).await.map(|_| ()),
        ] {
            let status = got
                .err()
                .ok_or_else(|| anyhow::anyhow!("{group}: accepted garbage"))?;
            assert_eq!(status.code(), want, "{group}: {}", status.message());
        }
    }
    // The group is undisturbed: same leader and term, and it still commits.
    client.set_meta("global", "still", Some("fine")).await?;
    let after = deploy_client::ClusterStatusView(client.cluster_status().await?);
    assert_eq!(after.leader("global"), before.leader("global"));
    assert_eq!(after.term("global"), before.term("global"));
    Ok(())
}

/// A write sent again under its request id (its answer was lost with a connection) applies
/// once, on every write RPC: metadata of either kind of group, a build's cancel, tokens, and
/// membership changes (whose repeat finds what it asked for already done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_sent_again_under_its_request_id_applies_once() -> anyhow::Result<()> {
    use deploy_proto::v1 as pb;
    use deploy_proto::v1::build_service_client::BuildServiceClient;
    use deploy_proto::v1::cluster_service_client::ClusterServiceClient;
    use deploy_proto::v1::token_service_client::TokenServiceClient;

    let c = GrpcCluster::start_with_spares(1, &[("east", 1)], 1).await?;
    let client = c.client_of("g1")?;
    wait_until(T, "leaders", || async {
        let s = deploy_client::ClusterStatusView(client.cluster_status().await.ok()?);
        (s.leader("global").is_some() && s.leader("region/east").is_some()).then_some(())
    })
    .await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs["g1"]))?
        .connect()
        .await?;
    let mut cluster = ClusterServiceClient::new(channel.clone());

    for group in ["global", "region/east"] {
        let set = |value: &str, id: &str| pb::SetMetaRequest {
            group: group.into(),
            key: "k".into(),
            value: Some(value.into()),
            request_id: id.into(),
        };
        let first = cluster.set_meta(set("a", "meta-1")).await?.into_inner();
        assert!(!first.repeated);
        cluster.set_meta(set("b", "")).await?;
        let again = cluster.set_meta(set("a", "meta-1")).await?.into_inner();
        assert!(again.repeated, "{group}: {again:?}");
        let now = client.get_meta(group, "k", false).await?;
        assert_eq!(
            now.value.as_deref(),
            Some("b"),
            "{group}: the repeat applied again"
        );
    }

    // A token: the repeat cannot hand out the secret again, and makes no second token.
    let mut tokens = TokenServiceClient::new(channel.clone());
    let create = pb::CreateTokenRequest {
        name: "ci".into(),
        role: "reader".into(),
        services: vec![],
        request_id: "token-1".into(),
    };
    let made = tokens.create_token(create.clone()).await?.into_inner();
    assert!(made.secret.starts_with("dpl_"));
    let again = tokens
        .create_token(create)
        .await
        .expect_err("a second secret");
    assert_eq!(again.code(), tonic::Code::AlreadyExists);
    assert!(
        again.message().contains("shown only once"),
        "{}",
        again.message()
    );
    let revoke = pb::RevokeTokenRequest {
        name: "ci".into(),
        request_id: "revoke-1".into(),
    };
    tokens.revoke_token(revoke.clone()).await?;
    tokens.revoke_token(revoke.clone()).await?;
    let unnamed = tokens
        .revoke_token(pb::RevokeTokenRequest {
            request_id: String::new(),
            ..revoke
        })
        .await
        .expect_err("the token is gone");
    assert_eq!(unnamed.code(), tonic::Code::NotFound);

    // A build's cancel: the repeat answers with the build as it is.
    let b = client
        .submit_build("svc", "/srv/git/svc", &"a".repeat(40))
        .await?;
    let mut builds = BuildServiceClient::new(channel.clone());
    let cancel = pb::CancelBuildRequest {
        id: b.id.clone(),
        request_id: "cancel-1".into(),
    };
    let first = builds.cancel_build(cancel.clone()).await?.into_inner();
    let again = builds.cancel_build(cancel.clone()).await?.into_inner();
    assert_eq!(first.state, again.state);
    assert_eq!(again.state(), pb::BuildState::Cancelled);
    let unnamed = builds
        .cancel_build(pb::CancelBuildRequest {
            request_id: String::new(),
            ..cancel
        })
        .await;
    assert!(unnamed.is_err(), "{unnamed:?}");

    // Membership: a repeat under its id finds the change made; another call is refused.
    let add = |id: &str| pb::AddNodeRequest {
        group: "global".into(),
        node_id: "s1".into(),
        addr: c.addrs["s1"].clone(),
        request_id: id.into(),
    };
    let r = cluster.add_node(add("add-1")).await?.into_inner();
    assert!(r.members.iter().any(|m| m.id == "s1" && m.voter), "{r:?}");
    let again = cluster.add_node(add("add-1")).await?.into_inner();
    assert!(
        again.members.iter().any(|m| m.id == "s1" && m.voter),
        "{again:?}"
    );
    let other = cluster
        .add_node(add("add-2"))
        .await
        .expect_err("already a voter");
    assert_eq!(other.code(), tonic::Code::FailedPrecondition);
    let remove = |id: &str| pb::RemoveNodeRequest {
        group: "global".into(),
        node_id: "s1".into(),
        request_id: id.into(),
    };
    let r = cluster.remove_node(remove("remove-1")).await?.into_inner();
    assert!(!r.members.iter().any(|m| m.id == "s1"), "{r:?}");
    cluster.remove_node(remove("remove-1")).await?;
    let other = cluster
        .remove_node(remove("remove-2"))
        .await
        .expect_err("not a member");
    assert_eq!(other.code(), tonic::Code::NotFound);
    Ok(())
}
