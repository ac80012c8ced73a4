//! The relay's maps stay bounded whatever names the region's goals and the hosts' requests
//! bring: 10,000 of each leave them at the size of the rack's live goals.

use super::*;
use deploy_artifact::manifest::ChunkRef;
use deploy_artifact::KeyPair;

const HOSTS: [&str; 2] = ["h1", "h2"];

/// An upstream that serves, for any digest asked, a manifest signed by `key` naming it.
async fn upstream(key: KeyPair) -> String {
    let key = Arc::new(key);
    let app = Router::new().route(
        "/v1/manifests/{hex}",
        get(move |Path(hex): Path<String>| {
            let key = key.clone();
            async move {
                let Ok(d) = Digest::from_hex(&hex) else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                let mut m = Manifest {
                    version: 1,
                    artifact_digest: d,
                    size: 1,
                    chunk_size: 4,
                    chunks: vec![ChunkRef {
                        digest: Digest::of(hex.as_bytes()),
                        size: 1,
                    }],
                    service: "svc".into(),
                    build_id: "b".into(),
                    commit: "c".into(),
                    signature: None,
                };
                key.sign(&mut m);
                Json(m).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr.to_string()
}

fn relay(dir: &std::path::Path, upstream: String, trusted: TrustedKeys) -> Relay {
    Relay::new(RelayOptions {
        id: "relay-1".into(),
        region: "east".into(),
        rack: "rack-1".into(),
        hosts: HOSTS.map(String::from).to_vec(),
        coordinators: vec![upstream],
        parent: None,
        cache_dir: dir.to_path_buf(),
        cache_max_bytes: 1 << 20,
        up_limit: None,
        down_limit: None,
        nic: crate::bucket::Nic::unlimited(),
        trusted,
        max_chunk_bytes: 1 << 20,
        transport: deploy_tls::Transport::Plain,
        exchange: true,
    })
    .unwrap()
}

/// The region's reply for round `i`: each of the rack's hosts runs `live` services at build
/// `i`, one invented service `x{i}`, and an invented host outside the rack.
fn reply(i: usize, live: usize) -> pb::ReportRackReply {
    let goal = |service: String| pb::ServiceGoal {
        artifact_digest: Digest::of(format!("{service}@{i}").as_bytes()).to_string(),
        service,
        build_id: format!("b-{i}"),
        release: format!("r-{i}"),
        max_unavailable_per_rack: 1,
    };
    let mut hosts: Vec<pb::HostGoals> = HOSTS
        .iter()
        .map(|h| pb::HostGoals {
            host: h.to_string(),
            registered: true,
            goals: (0..live)
                .map(|s| goal(format!("s{s}")))
                .chain([goal(format!("x{i}"))])
                .collect(),
        })
        .collect();
    hosts.push(pb::HostGoals {
        host: format!("invented-{i}"),
        registered: true,
        goals: vec![goal(format!("y{i}"))],
    });
    pb::ReportRackReply {
        hosts,
        ..Default::default()
    }
}

#[tokio::test]
async fn ten_thousand_invented_names_leave_the_maps_flat() {
    let key = KeyPair::generate().unwrap();
    let trusted = TrustedKeys::parse(&[key.public_hex()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = relay(dir.path(), upstream(key).await, trusted);
    let me = &r.inner;
    let live = 3;
    // Each service of the goals pins its live and previous artifact: at most 2 each.
    let bound = 2 * (live + 1);
    for i in 0..10_000 {
        me.set_goals(&reply(i, live));
        for h in HOSTS {
            me.goals_for(h);
        }
        // As a host asking for the goal's manifest would, and one asking for an invented one.
        let goal = Digest::parse(&reply(i, live).hosts[0].goals[0].artifact_digest).unwrap();
        me.manifest(&goal).await.unwrap();
        me.manifest(&Digest::of(format!("invented-{i}").as_bytes()))
            .await
            .unwrap();
        me.repin();
        let (handed, pins, manifests) = (
            lock(&me.handed).len(),
            lock(&me.pins).values().map(Vec::len).sum::<usize>(),
            lock(&me.manifests).len(),
        );
        assert!(
            handed <= HOSTS.len() * (live + 1),
            "round {i}: {handed} handed"
        );
        assert!(pins <= bound, "round {i}: {pins} pins");
        assert!(manifests <= bound, "round {i}: {manifests} manifests");
    }
    assert_eq!(
        lock(&me.goals).len(),
        HOSTS.len(),
        "invented hosts are not held"
    );
    assert_eq!(
        lock(&me.pins).len(),
        live + 1,
        "services no goal names are forgotten"
    );
    // (The relay also fetches each newly pinned artifact's manifest itself.)
    let pinned = me.pinned();
    assert!(
        lock(&me.manifests).keys().all(|d| pinned.contains(d)),
        "only pinned manifests are kept"
    );
}

#[tokio::test]
async fn a_goal_with_a_malformed_digest_is_dropped_not_handed_on() {
    let dir = tempfile::tempdir().unwrap();
    let r = relay(
        dir.path(),
        "127.0.0.1:1".into(),
        TrustedKeys::parse::<&str>(&[]).unwrap(),
    );
    let mut bad = reply(1, 2);
    bad.hosts[0].goals[0].artifact_digest = "sha256:ABC".into();
    r.inner.set_goals(&bad);
    let goals = r.inner.goals_for("h1");
    assert_eq!(goals.len(), 2, "{goals:?}");
    assert!(goals.iter().all(|g| g.service != "s0"));
}
