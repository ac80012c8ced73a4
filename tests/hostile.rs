//! Hostile input against a secure cluster of real processes. Each input gets a clear error
//! and changes nothing: bytes that are not protobuf, messages over the size limit, oversize
//! fields, bad SHAs and names, path traversal in chunk and manifest URLs (on nodes and
//! relays), a recipe that reaches for the worker's environment, keys and files outside its
//! scratch directory, a forged manifest signature, and replayed or stale fencing tokens.
//! (Hostile tars are refused by the unpacker: `deploy-fanout`'s unpack tests.)

use bytes::{Buf, BufMut};
use deploy_proto::v1 as pb;
use deploy_proto::v1::build_service_client::BuildServiceClient as Builds;
use deploy_proto::v1::region_service_client::RegionServiceClient as Regions;
use deploy_proto::v1::release_service_client::ReleaseServiceClient as Releases;
use deploy_proto::v1::token_service_client::TokenServiceClient as Tokens;
use deploy_proto::v1::worker_service_client::WorkerServiceClient as Workers;
use test_harness::gitrepo::{GitRepo, RECIPE};
use test_harness::releases::T;
use test_harness::secure::{api_channel, bearer, channel_as, snapshot, transport_of as transport};
use test_harness::{wait_until, ProcessCluster, Spec};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Sends and receives bytes as they are: a client that can say what protobuf cannot.
#[derive(Debug, Clone, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// `bytes` as the body of `method`, as the admin.
async fn raw_call(ch: &Channel, method: &'static str, bytes: Vec<u8>, token: &str) -> Status {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    if let Err(e) = grpc.ready().await {
        return Status::unavailable(e.to_string());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    match grpc.unary(bearer(bytes, Some(token)), path, Raw).await {
        Ok(_) => Status::ok("answered"),
        Err(s) => s,
    }
}

/// Asserts `status` is `code` and its message names `words` (each, case-insensitively).
fn expect(what: &str, status: &Status, code: Code, words: &[&str]) {
    assert_eq!(status.code(), code, "{what}: {status:?}");
    let m = status.message().to_lowercase();
    for w in words {
        assert!(
            m.contains(&w.to_lowercase()),
            "{what}: {:?} does not say {w:?}",
            status.message()
        );
    }
    assert!(
        m.len() < 600,
        "{what}: an error this long is no clear error: {} bytes",
        m.len()
    );
}

fn started() -> anyhow::Result<(ProcessCluster, deploy_client::Client, String)> {
    let spec = Spec::new(1)
        .region("east", 1)
        .worker("wk", "east")
        .rack("east", 1)
        .secure();
    test_harness::secure::start_with_admin(spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_api_input_gets_clear_errors_and_changes_nothing() -> anyhow::Result<()> {
    let (c, admin, token) = started()?;
    wait_until(T, "the host to report", || async {
        let hosts = admin
            .list_hosts(pb::ListHostsRequest {
                region: "east".into(),
                ..Default::default()
            })
            .await
            .ok()?;
        hosts.hosts.iter().any(|h| h.reported).then_some(())
    })
    .await?;
    let ch = api_channel(c.dir(), c.addr("g1")?).await?;
    let before = snapshot(&admin, &["east"]).await?;

    // Not protobuf: a length running past the end, a field number 0, a string that is not
    // UTF-8, and a wire type that does not exist.
    for (what, bytes) in [
        (
            "a length past the end",
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x'],
        ),
        ("field number 0", vec![0x02, 0x01, b'x']),
        ("a string that is not UTF-8", vec![0x0a, 0x02, 0xff, 0xfe]),
        ("wire type 7", vec![0x0f, 0x00]),
    ] {
        let s = raw_call(&ch, "/deploy.v1.BuildService/SubmitBuild", bytes, &token).await;
        expect(what, &s, Code::Internal, &["decode"]);
    }
    let s = raw_call(
        &ch,
        "/deploy.v1.ReleaseService/CreateRelease",
        vec![0xff; 64],
        &token,
    )
    .await;
    expect("garbage to CreateRelease", &s, Code::Internal, &["decode"]);

    // Over the 4 MiB message limit: refused before it is decoded.
    let huge = "x".repeat(5 * 1024 * 1024);
    let s = Builds::new(ch.clone())
        .submit_build(bearer(
            pb::SubmitBuildRequest {
                service: "web".into(),
                repo: huge.clone(),
                commit: "a".repeat(40),
            },
            Some(&token),
        ))
        .await
        .expect_err("a 5 MiB request");
    expect("a 5 MiB request", &s, Code::OutOfRange, &["too large"]);

    // Fields over their own bounds, bad SHAs and names: refused naming the field.
    let submit = |service: String, repo: String, commit: String| {
        let ch = ch.clone();
        let token = token.clone();
        async move {
            Builds::new(ch)
                .submit_build(bearer(
                    pb::SubmitBuildRequest {
                        service,
                        repo,
                        commit,
                    },
                    Some(&token),
                ))
                .await
                .expect_err("a hostile build request was accepted")
        }
    };
    let repo = "https://git.example/web.git".to_string();
    let sha = "a".repeat(40);
    for (what, service, repo, commit, field) in [
        (
            "a 100 KiB repo",
            "web".into(),
            format!("https://git.example/{}", "r".repeat(100 * 1024)),
            sha.clone(),
            "repo",
        ),
        (
            "a 10 KiB service",
            "s".repeat(10 * 1024),
            repo.clone(),
            sha.clone(),
            "service",
        ),
        (
            "a short SHA",
            "web".into(),
            repo.clone(),
            "abc123".into(),
            "commit",
        ),
        (
            "a SHA of 41",
            "web".into(),
            repo.clone(),
            "a".repeat(41),
            "commit",
        ),
        (
            "a SHA that is not hex",
            "web".into(),
            repo.clone(),
            "g".repeat(40),
            "commit",
        ),
        (
            "a SHA with a newline",
            "web".into(),
            repo.clone(),
            format!("{}\n", "a".repeat(39)),
            "commit",
        ),
        (
            "a ref instead of a SHA",
            "web".into(),
            repo.clone(),
            "refs/heads/main".into(),
            "commit",
        ),
        (
            "a service that climbs",
            "../../etc".into(),
            repo.clone(),
            sha.clone(),
            "service",
        ),
        (
            "a service with a slash",
            "web/x".into(),
            repo.clone(),
            sha.clone(),
            "service",
        ),
        (
            "an empty service",
            String::new(),
            repo.clone(),
            sha.clone(),
            "service",
        ),
        (
            "a service with NUL",
            "web\0x".into(),
            repo.clone(),
            sha.clone(),
            "service",
        ),
        (
            "a repo that is an option",
            "web".into(),
            "--upload-pack=touch /tmp/pwned".into(),
            sha.clone(),
            "repo",
        ),
        (
            "a repo over ext::",
            "web".into(),
            "ext::sh -c touch% /tmp/pwned".into(),
            sha.clone(),
            "repo",
        ),
    ] {
        let s = submit(service, repo, commit).await;
        expect(what, &s, Code::InvalidArgument, &[field]);
    }
    for (what, id) in [
        ("a build id that climbs", "b-../../1"),
        ("a build id of letters", "build-one"),
        ("a huge build id", &*"9".repeat(5000)),
    ] {
        let s = Builds::new(ch.clone())
            .get_build(bearer(
                pb::GetBuildRequest {
                    id: id.into(),
                    stale: false,
                },
                Some(&token),
            ))
            .await
            .expect_err(what);
        expect(what, &s, Code::InvalidArgument, &["build id"]);
    }
    let s = Releases::new(ch.clone())
        .create_release(bearer(
            pb::CreateReleaseRequest {
                service: "../web".into(),
                build_id: "b-1".into(),
                regions: vec!["east".into()],
                ..Default::default()
            },
            Some(&token),
        ))
        .await
        .expect_err("a release of a climbing service");
    expect(
        "a release of a climbing service",
        &s,
        Code::InvalidArgument,
        &["service"],
    );
    let s = Releases::new(ch.clone())
        .create_release(bearer(
            pb::CreateReleaseRequest {
                service: "web".into(),
                build_id: "b-1".into(),
                regions: vec!["east/../west".into()],
                ..Default::default()
            },
            Some(&token),
        ))
        .await
        .expect_err("a release to a climbing region");
    assert!(
        matches!(s.code(), Code::InvalidArgument | Code::NotFound),
        "a release to a climbing region: {s:?}"
    );
    let s = Regions::new(ch.clone())
        .get_host(bearer(
            pb::GetHostRequest {
                region: "east".into(),
                host: "../../etc/passwd".into(),
                ..Default::default()
            },
            Some(&token),
        ))
        .await
        .expect_err("a climbing host name");
    expect("a climbing host name", &s, Code::InvalidArgument, &["host"]);
    let s = Tokens::new(ch.clone())
        .create_token(bearer(
            pb::CreateTokenRequest {
                name: "a b\n".into(),
                role: "admin".into(),
                services: vec![],
                request_id: String::new(),
            },
            Some(&token),
        ))
        .await
        .expect_err("a token name with spaces");
    expect(
        "a token name with spaces",
        &s,
        Code::InvalidArgument,
        &["name"],
    );
    let s = Tokens::new(ch.clone())
        .create_token(bearer(
            pb::CreateTokenRequest {
                name: "ops".into(),
                role: "root".into(),
                services: vec![],
                request_id: String::new(),
            },
            Some(&token),
        ))
        .await
        .expect_err("an unknown role");
    expect("an unknown role", &s, Code::InvalidArgument, &["role"]);

    // Path traversal in artifact URLs, on a node and on a relay, as the cluster's own
    // processes (the only ones these URLs serve).
    let relay = c.addr("east-rack-1-relay")?.to_string();
    let east = c.addr("east-1")?.to_string();
    for (server, as_process) in [(&east, "wk"), (&relay, "east-1-h1")] {
        let http = deploy_fanout::fetch::client(&transport(&c, as_process)?);
        for path in [
            "/v1/chunks/%2e%2e%2f%2e%2e%2fkeys%2fbuild.key",
            "/v1/chunks/..%2F..%2F..%2Fetc%2Fpasswd",
            "/v1/manifests/%2e%2e%2fmanifests%2fx",
            "/v1/manifests/sha256:..%2f..%2fcerts%2fca.key",
            "/v1/chunks/sha256:%00",
            "/v1/chunks/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let r = http.get(format!("https://{server}{path}")).send().await?;
            let status = r.status();
            let body = r
                .text()
                .await
                .unwrap_or_else(|e| format!("<body error: {e:?}>"));
            assert_eq!(status, 400, "{server}{path}: {body:?}");
            assert!(!body.contains("PRIVATE KEY"), "{server}{path} served a key");
            assert!(
                body.contains("expected a digest"),
                "{server}{path}: {body:?}"
            );
        }
        // A well-formed digest of nothing stored: a clear refusal before any body.
        let r = http
            .get(format!("https://{server}/v1/chunks/{}", "ab".repeat(32)))
            .send()
            .await?;
        let status = r.status();
        let body = r.text().await?;
        assert!(
            status == 404 || status == 502,
            "{server}: {status} {body:?}"
        );
        assert!(
            body.contains("ab".repeat(32).as_str()),
            "{server}: {body:?}"
        );
        // A 60 KB path: over the header bounds; refused, or the connection is.
        let long = format!("https://{server}/v1/chunks/{}", "a".repeat(60_000));
        if let Ok(r) = http.get(long).send().await {
            assert!(r.status().is_client_error(), "a 60 KB URL: {}", r.status());
        }
    }

    assert_eq!(
        snapshot(&admin, &["east"]).await?,
        before,
        "a refused input changed the cluster"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_recipes_forged_manifests_and_stale_leases_are_refused() -> anyhow::Result<()> {
    let (c, admin, _token) = started()?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let key = c.dir().join("keys").join("build.key");
    let planted = c.dir().join("planted");
    let worker_pid = c
        .pid("wk")
        .ok_or_else(|| anyhow::anyhow!("the worker is not running"))?;
    // The worker's environment is there to steal: this test process (root, or its owner)
    // can read it.
    let environ = std::fs::read(format!("/proc/{worker_pid}/environ"))?;
    assert!(!environ.is_empty());
    let ca_key = test_harness::certs_dir(c.dir()).join("ca.key");
    // The recipe tries: the worker's environment, the signing key, the CA's key, a file
    // next to the cluster's, /tmp, and a climb out of its checkout. It reports each and
    // still builds, so its log is the evidence.
    let script = format!(
        "try() {{ if sh -c \"$2\" >/dev/null 2>&1; then echo \"ESCAPED: $1\"; else echo \"refused: $1\"; fi; }}\n\
         try environ 'cat /proc/{worker}/environ | grep -q .'\n\
         try key 'cat {key}'\n\
         try ca-key 'cat {ca_key}'\n\
         try plant 'echo x > {planted}'\n\
         try tmp 'echo x > /tmp/deploy-hostile-recipe'\n\
         try climb 'echo x > ../../climbed'\n\
         env | sed 's/^/env: /'\n\
         mkdir -p out && echo ok > out/app\n",
        worker = worker_pid,
        key = key.display(),
        ca_key = ca_key.display(),
        planted = planted.display(),
    );
    let sha = repo.commit("v1", &[("deploy.toml", RECIPE), ("build.sh", &script)])?;
    let b = admin.submit_build("web", &repo.url(), &sha).await?;
    let done = wait_until(T, "the build to end", || async {
        let b = admin.get_build(&b.id, false).await.ok()?;
        b.state().is_final().then_some(b)
    })
    .await?;
    assert_eq!(done.state().name(), "SUCCEEDED", "{done:#?}");
    let mut stream = admin.build_logs(&b.id, false).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend(chunk.data);
    }
    let log = String::from_utf8(bytes)?;
    for what in ["environ", "key", "ca-key", "plant", "tmp", "climb"] {
        assert!(
            log.contains(&format!("refused: {what}\n")),
            "{what} not refused:\n{log}"
        );
    }
    assert!(!log.contains("ESCAPED"), "{log}");
    assert!(!planted.exists() && !std::path::Path::new("/tmp/deploy-hostile-recipe").exists());
    // The build's environment is its own: the worker's (which holds, under cargo test,
    // CARGO_MANIFEST_DIR) is not in it.
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok());
    let env: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("env: "))
        .collect();
    assert!(!env.is_empty(), "{log}");
    for line in &env {
        let name = line.split('=').next().unwrap_or_default();
        assert!(
            ["PATH", "HOME", "TMPDIR", "PWD", "SHLVL", "OLDPWD", "_"].contains(&name),
            "the build saw {line:?}"
        );
    }

    // A forged manifest: the build's own, with a field changed after signing, and one
    // signed by a key the cluster does not trust. Neither is served nor accepted.
    let digest = deploy_types::Digest::parse(&done.artifact_digest)?;
    let real = c.store("east")?.get_manifest(&digest).await?;
    let east = c.addr("east-1")?.to_string();
    let http = deploy_fanout::fetch::client(&transport(&c, "east-1-h1")?);
    let config = deploy_types::ClusterConfig::load(c.config_path())?;
    let trusted = deploy_artifact::TrustedKeys::parse(&config.signing.trusted_keys)?;
    let sources = vec![format!("https://{east}")];
    deploy_fanout::fetch::manifest(&http, &sources, &digest, &trusted).await?;
    let mut tampered = real.clone();
    tampered.service = "db".into();
    let mut foreign = real.clone();
    deploy_artifact::KeyPair::generate()?.sign(&mut foreign);
    // The store's own file, overwritten (the store writes a manifest only once).
    let file = c
        .dir()
        .join("stores/east/manifests")
        .join(format!("{}.json", digest.hex()));
    let original = std::fs::read(&file)?;
    for (what, m) in [("tampered", tampered), ("signed by a stranger", foreign)] {
        std::fs::write(&file, serde_json::to_vec(&m)?)?;
        let r = http
            .get(format!("https://{east}/v1/manifests/{digest}"))
            .send()
            .await?;
        let status = r.status();
        let body = r.text().await?;
        assert_eq!(status, 502, "a {what} manifest was served: {body}");
        assert!(
            body.contains("signature") || body.contains("trust"),
            "{what}: {body}"
        );
        let e = deploy_fanout::fetch::manifest(&http, &sources, &digest, &trusted)
            .await
            .expect_err("a forged manifest was accepted");
        assert!(e.to_string().contains("manifest"), "{e}");
    }
    std::fs::write(&file, original)?;
    deploy_fanout::fetch::manifest(&http, &sources, &digest, &trusted).await?;

    // Fencing tokens: a replayed completion of the finished attempt, a completion and a
    // renewal from an attempt that never held the lease, and one from another worker.
    let ch = channel_as(&c, c.addr("g1")?, "wk")?;
    let workers = Workers::new(ch);
    for (what, attempt, worker) in [
        ("a replayed completion", done.attempts, "wk"),
        ("a stale attempt", done.attempts + 1, "wk"),
        ("an attempt of attempt 0", 0, "wk"),
        ("another worker", done.attempts, "wk-other"),
    ] {
        let s = workers
            .clone()
            .complete_build(pb::CompleteBuildRequest {
                id: b.id.clone(),
                worker: worker.into(),
                attempt,
                artifact_digest: format!("sha256:{}", "0".repeat(64)),
                artifact_size: 1,
                error: String::new(),
                retry: false,
            })
            .await
            .expect_err(what);
        assert!(
            matches!(
                s.code(),
                Code::FailedPrecondition | Code::PermissionDenied | Code::NotFound
            ),
            "{what}: {s:?}"
        );
        let s = workers
            .clone()
            .renew_lease(pb::RenewLeaseRequest {
                id: b.id.clone(),
                worker: worker.into(),
                attempt,
            })
            .await;
        match s {
            Ok(r) => assert!(!r.get_ref().ok, "{what}: a renewal was granted"),
            Err(s) => assert!(
                matches!(
                    s.code(),
                    Code::FailedPrecondition | Code::PermissionDenied | Code::NotFound
                ),
                "{what}: {s:?}"
            ),
        }
    }
    let after = admin.get_build(&b.id, false).await?;
    assert_eq!(after.state().name(), "SUCCEEDED");
    assert_eq!(after.artifact_digest, done.artifact_digest);
    assert_eq!(after.attempts, done.attempts);
    Ok(())
}
