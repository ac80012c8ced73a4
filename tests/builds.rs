//! The build system over loopback gRPC with in-process workers: real git repositories,
//! real build commands, real stores.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use deploy_client::{Client, ClientError, Code};
use deploy_proto::v1::{Build, ListBuildsRequest};
use test_harness::gitrepo::{GitRepo, RECIPE};
use test_harness::{wait_until, GrpcCluster, Spec};

const T: Duration = Duration::from_secs(60);

fn spec() -> Spec {
    Spec::new(3)
        .region("east", 1)
        .region("west", 1)
        .worker("wk-east", "east")
        .worker("wk-west", "west")
}

async fn wait_final(client: &Client, id: &str) -> anyhow::Result<Build> {
    test_harness::releases::wait_build(client, id, T).await
}

/// The artifact a build made.
fn artifact(b: &Build) -> anyhow::Result<deploy_types::Digest> {
    Ok(deploy_types::Digest::parse(&b.artifact_digest)?)
}

/// The files of an artifact, read back from a store through its manifest and chunks.
async fn artifact_files(
    store: &deploy_artifact::Store,
    digest: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let m = store
        .get_manifest(&deploy_types::Digest::parse(digest)?)
        .await?;
    let mut tar = Vec::new();
    for c in &m.chunks {
        tar.extend_from_slice(&store.get_chunk(&c.digest, m.chunk_size).await?);
    }
    assert_eq!(deploy_artifact::digest_of(&tar), m.artifact_digest);
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries()? {
        let mut e = e?;
        if e.header().entry_type().is_file() {
            let name = e.path()?.display().to_string();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s)?;
            files.insert(name, s);
        }
    }
    Ok(files)
}

async fn logs(client: &Client, id: &str) -> anyhow::Result<String> {
    let mut stream = client.build_logs(id, false).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_commit_builds_with_that_commits_files_into_every_region() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(spec()).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let script = "echo \"building $(cat VERSION)\"\nmkdir -p out\ncp VERSION out/version\necho app > out/app\n";
    let v1 = repo.commit(
        "v1",
        &[
            ("deploy.toml", RECIPE),
            ("build.sh", script),
            ("VERSION", "1\n"),
        ],
    )?;
    repo.commit("v2", &[("VERSION", "2\n")])?;
    repo.commit("v3", &[("VERSION", "3\n")])?;
    let client = c.client()?;

    let submitted = client.submit_build("hello", &repo.url(), &v1).await?;
    assert!(submitted.created);
    let b = wait_final(&client, &submitted.id).await?;
    assert_eq!(b.state().name(), "SUCCEEDED", "{b:?}");
    assert_eq!(b.attempts, 1);
    assert_eq!(b.regions_done, ["east", "west"]);
    assert!(b.artifact_digest.starts_with("sha256:"));
    for region in ["east", "west"] {
        let files = artifact_files(&c.store(region)?, &b.artifact_digest).await?;
        assert_eq!(
            files.get("out/version").map(String::as_str),
            Some("1\n"),
            "{region}: {files:?}"
        );
        assert!(files
            .get(".deploy/run.toml")
            .is_some_and(|r| r.contains("./out/app")));
    }
    // Submitting again returns the same build; the log holds the command's output.
    let again = client.submit_build("hello", &repo.url(), &v1).await?;
    assert_eq!((again.id.as_str(), again.created), (b.id.as_str(), false));
    let log = logs(&client, &b.id).await?;
    assert!(log.contains("building 1"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_failed_with_the_reason_and_are_not_retried() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(spec()).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let no_recipe = repo.commit("nothing", &[("README", "no recipe here\n")])?;
    let failing = repo.commit(
        "fails",
        &[
            ("deploy.toml", RECIPE),
            ("build.sh", "echo broken >&2\nexit 3\n"),
        ],
    )?;
    let client = c.client()?;
    let missing = "0".repeat(40);
    for (commit, want) in [
        (no_recipe.as_str(), "deploy.toml is missing"),
        (failing.as_str(), "exited with code 3"),
        (missing.as_str(), "commit not found"),
    ] {
        let b = client.submit_build("svc", &repo.url(), commit).await?;
        let b = wait_final(&client, &b.id).await?;
        assert_eq!(b.state().name(), "FAILED", "{b:?}");
        assert!(b.error.contains(want), "{want}: {}", b.error);
        assert_eq!(b.attempts, 1, "a final failure is not retried");
    }
    // A failed build is submitted anew.
    let retry = client.submit_build("svc", &repo.url(), &failing).await?;
    assert!(retry.created);
    Ok(())
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_running_build_and_its_children() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(Spec::new(3).region("east", 1).worker("wk", "east")).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let pids = test_harness::witness_dir(&c.dir()).join("pids");
    let script = format!(
        "echo $$ > {p}.tmp\nsleep 300 &\necho $! >> {p}.tmp\nmv {p}.tmp {p}\nwait\n",
        p = pids.display()
    );
    let slow = repo.commit("slow", &[("deploy.toml", RECIPE), ("build.sh", &script)])?;
    let quick = repo.commit(
        "quick",
        &[("build.sh", "mkdir -p out && echo hi > out/app\n")],
    )?;
    let client = c.client()?;
    let b = client.submit_build("slow", &repo.url(), &slow).await?;
    let running: Vec<i32> = wait_until(T, "the build's processes to start", || async {
        let text = std::fs::read_to_string(&pids).ok()?;
        let p: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (p.len() == 2).then_some(p)
    })
    .await?;
    assert!(running.iter().all(|p| pid_alive(*p)));

    let cancelled = client.cancel_build(&b.id).await?;
    assert_eq!(cancelled.state().name(), "CANCELLED");
    wait_until(
        Duration::from_secs(5),
        "the build's processes to die",
        || async { running.iter().all(|p| !pid_alive(*p)).then_some(()) },
    )
    .await?;
    // Cancelling again is refused; the worker is free for the next build.
    let again = client.cancel_build(&b.id).await;
    assert!(
        matches!(
            again,
            Err(ClientError::Api {
                code: Code::FailedPrecondition,
                ..
            })
        ),
        "{again:?}"
    );
    let next = client.submit_build("quick", &repo.url(), &quick).await?;
    assert_eq!(
        wait_final(&client, &next.id).await?.state().name(),
        "SUCCEEDED"
    );
    assert_eq!(
        client.get_build(&b.id, false).await?.state().name(),
        "CANCELLED"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_build_requests_are_refused_naming_the_field() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(spec()).await?;
    let client = c.client()?;
    let sha = "a".repeat(40);
    let cases = [
        ("Bad_Service", "/srv/repo", sha.as_str(), "service"),
        ("", "/srv/repo", sha.as_str(), "service"),
        ("svc", "relative/path", sha.as_str(), "repo"),
        ("svc", "ftp://host/repo", sha.as_str(), "repo"),
        ("svc", "-uoops", sha.as_str(), "repo"),
        ("svc", "/srv/repo", "HEAD", "commit"),
        ("svc", "/srv/repo", &"A".repeat(40), "commit"),
        ("svc", "/srv/repo", "abc123", "commit"),
    ];
    for (service, repo, commit, field) in cases {
        match client.submit_build(service, repo, commit).await {
            Err(ClientError::Api { code, message, .. }) => {
                assert_eq!(code, Code::InvalidArgument, "{field}: {message}");
                assert!(message.contains(field), "{field}: {message}");
            }
            other => panic!("{field}: expected InvalidArgument, got {other:?}"),
        }
    }
    for bad in ["b-0x", "nonsense", "../b-1"] {
        let r = client.get_build(bad, false).await;
        assert!(
            matches!(
                r,
                Err(ClientError::Api {
                    code: Code::InvalidArgument,
                    ..
                })
            ),
            "{bad}: {r:?}"
        );
    }
    let r = client.get_build("b-999", false).await;
    assert!(
        matches!(
            r,
            Err(ClientError::Api {
                code: Code::NotFound,
                ..
            })
        ),
        "{r:?}"
    );
    let r = client
        .list_builds(ListBuildsRequest {
            // A state number this server does not know is refused, not taken for "any".
            state: 99,
            ..Default::default()
        })
        .await;
    assert!(
        matches!(
            r,
            Err(ClientError::Api {
                code: Code::InvalidArgument,
                ..
            })
        ),
        "{r:?}"
    );
    // Nothing was queued.
    let all = client.list_builds(ListBuildsRequest::default()).await?;
    assert!(all.builds.is_empty(), "{:?}", all.builds);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_builds_on_four_workers_each_run_exactly_once() -> anyhow::Result<()> {
    let spec = Spec::new(3)
        .region("east", 1)
        .region("west", 1)
        .worker("wk-1", "east")
        .worker("wk-2", "east")
        .worker("wk-3", "west")
        .worker("wk-4", "west");
    let c = GrpcCluster::start_spec(spec).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let ran = test_harness::witness_dir(&c.dir()).join("ran.log");
    let script = format!("cat ID >> {}\nmkdir -p out\ncp ID out/app\n", ran.display());
    let mut commits = vec![repo.commit(
        "0",
        &[
            ("deploy.toml", RECIPE),
            ("build.sh", &script),
            ("ID", "0\n"),
        ],
    )?];
    for i in 1..200 {
        commits.push(repo.commit(&i.to_string(), &[("ID", &format!("{i}\n"))])?);
    }
    let client = c.client()?;
    let url = repo.url();
    let submitted = futures::future::try_join_all(
        commits
            .iter()
            .map(|sha| client.submit_build("many", &url, sha)),
    )
    .await?;
    let ids: Vec<String> = submitted.iter().map(|b| b.id.clone()).collect();
    assert_eq!(
        ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
        200
    );

    // Page through the list until every build has ended.
    let all = wait_until(
        Duration::from_secs(180),
        "all 200 builds to end",
        || async {
            let mut builds = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_builds(ListBuildsRequest {
                        service: "many".into(),
                        page_size: 64,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                builds.extend(page.builds);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            builds
                .iter()
                .all(|b| b.state().is_final())
                .then_some(builds)
        },
    )
    .await?;
    assert_eq!(all.len(), 200);
    let mut workers = std::collections::BTreeSet::new();
    for b in &all {
        assert_eq!(b.state().name(), "SUCCEEDED", "{b:?}");
        assert_eq!(b.attempts, 1, "{b:?}");
        workers.insert(b.worker.clone());
    }
    assert!(
        workers.len() >= 2,
        "builds should spread over workers: {workers:?}"
    );
    let log = std::fs::read_to_string(&ran)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in log.lines() {
        *counts.entry(line).or_default() += 1;
    }
    assert_eq!(counts.len(), 200, "every build ran");
    assert!(
        counts.values().all(|n| *n == 1),
        "a build ran twice: {counts:?}"
    );
    Ok(())
}

/// A plain HTTP/1.1 GET over loopback: (status, headers, body).
async fn http_get(
    addr: &str,
    path: &str,
    range: Option<&str>,
) -> anyhow::Result<(u16, String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let range = range.map(|r| format!("Range: {r}\r\n")).unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{range}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_lowercase(), raw[split + 4..].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_served_over_http_by_each_regions_nodes() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(spec()).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let big: String = (0..20_000).map(|i| format!("{i}\n")).collect();
    let script = "mkdir -p out\ncp data out/data\necho app > out/app\n";
    let sha = repo.commit(
        "v1",
        &[
            ("deploy.toml", RECIPE),
            ("build.sh", script),
            ("data", &big),
        ],
    )?;
    let client = c.client()?;
    let b = client.submit_build("web", &repo.url(), &sha).await?;
    let b = wait_final(&client, &b.id).await?;
    assert_eq!(b.state().name(), "SUCCEEDED", "{b:?}");
    // Both regions hold it; the one the worker was not in received it by replication.
    let copies: BTreeMap<String, (String, u64)> = b
        .replication
        .iter()
        .map(|r| {
            (
                r.region.clone(),
                (r.state().name().to_string(), r.bytes_copied),
            )
        })
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(
        copies
            .values()
            .all(|(state, bytes)| state == "DONE" && *bytes >= b.artifact_size),
        "{copies:?}"
    );

    for node in ["east-1", "west-1"] {
        let addr = &c.addrs[node];
        let (status, head, body) =
            http_get(addr, &format!("/v1/manifests/{}", b.artifact_digest), None).await?;
        assert_eq!(status, 200, "{node}: {head}");
        let m: deploy_artifact::Manifest = serde_json::from_slice(&body)?;
        assert!(m.signature.is_some());
        assert!(m.chunks.len() >= 2, "{} chunks", m.chunks.len());
        let chunk = &m.chunks[1];
        let (status, _, full) =
            http_get(addr, &format!("/v1/chunks/{}", chunk.digest), None).await?;
        assert_eq!(status, 200);
        assert_eq!(deploy_artifact::digest_of(&full), chunk.digest);
        let (status, head, part) = http_get(
            addr,
            &format!("/v1/chunks/{}", chunk.digest),
            Some("bytes=100-199"),
        )
        .await?;
        assert_eq!(status, 206, "{head}");
        assert!(
            head.contains(&format!("content-range: bytes 100-199/{}", full.len())),
            "{head}"
        );
        assert_eq!(part, full[100..200]);
        let (status, ..) = http_get(
            addr,
            &format!("/v1/chunks/{}", chunk.digest),
            Some("bytes=999999999-"),
        )
        .await?;
        assert_eq!(status, 416);
    }
    // Bad digests never reach a store; unknown ones are 404; a global-only node serves none.
    let east = &c.addrs["east-1"];
    assert_eq!(
        http_get(east, "/v1/chunks/..%2F..%2Fetc%2Fpasswd", None)
            .await?
            .0,
        400
    );
    assert_eq!(
        http_get(east, "/v1/manifests/sha256:1234", None).await?.0,
        400
    );
    // One spelling per digest: upper case names no object.
    let upper = b
        .artifact_digest
        .to_uppercase()
        .replace("SHA256:", "sha256:");
    assert_eq!(
        http_get(east, &format!("/v1/manifests/{upper}"), None)
            .await?
            .0,
        400
    );
    assert_eq!(
        http_get(east, &format!("/v1/chunks/sha256:{}", "0".repeat(64)), None)
            .await?
            .0,
        404
    );
    assert_eq!(
        http_get(
            &c.addrs["g1"],
            &format!("/v1/manifests/{}", b.artifact_digest),
            None
        )
        .await?
        .0,
        404
    );
    assert_eq!(http_get(east, "/healthz", None).await?.0, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_unreachable_past_the_deadline_fails_the_build_naming_it() -> anyhow::Result<()> {
    let spec = Spec::new(3)
        .region("east", 1)
        .region("west", 1)
        .worker("wk-east", "east")
        .replication_deadline_secs(2);
    let c = GrpcCluster::start_spec(spec).await?;
    // The west store becomes unwritable: its directory is replaced by a file.
    let west = c.dir().join("stores").join("west");
    std::fs::remove_dir_all(&west)?;
    std::fs::write(&west, "not a directory")?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let sha = repo.commit(
        "v1",
        &[
            ("deploy.toml", RECIPE),
            ("build.sh", "mkdir -p out && echo x > out/app\n"),
        ],
    )?;
    let client = c.client()?;
    let b = client.submit_build("svc", &repo.url(), &sha).await?;
    let b = wait_final(&client, &b.id).await?;
    assert_eq!(b.state().name(), "FAILED", "{b:?}");
    assert!(b.error.contains("region west"), "{}", b.error);
    let states: BTreeMap<String, String> = b
        .replication
        .iter()
        .map(|r| (r.region.clone(), r.state().name().to_string()))
        .collect();
    assert_eq!(states.get("east").map(String::as_str), Some("DONE"));
    assert_eq!(states.get("west").map(String::as_str), Some("FAILED"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_what_the_policy_drops_and_keeps_the_rest_whole() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(spec().retention(1, 0)).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let script = "mkdir -p out\ncp VERSION out/app\n";
    let mut builds = Vec::new();
    let client = c.client()?;
    for v in 1..=3 {
        let files: Vec<(&str, String)> = vec![("VERSION", format!("{v}\n"))];
        let mut all: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if v == 1 {
            all.extend([("deploy.toml", RECIPE), ("build.sh", script)]);
        }
        let sha = repo.commit(&format!("v{v}"), &all)?;
        let b = client.submit_build("svc", &repo.url(), &sha).await?;
        let b = wait_final(&client, &b.id).await?;
        assert_eq!(b.state().name(), "SUCCEEDED");
        builds.push(b);
    }
    let newest = builds[2].artifact_digest.clone();
    let older: BTreeMap<String, ()> = builds[..2]
        .iter()
        .map(|b| (b.artifact_digest.clone(), ()))
        .collect();

    // A dry run says what would go and deletes nothing.
    let dry = client.collect_garbage(true).await?;
    assert_eq!(dry.kept_artifacts, std::slice::from_ref(&newest));
    assert_eq!(dry.stores.len(), 2);
    for s in &dry.stores {
        let listed: BTreeMap<String, ()> =
            s.delete_manifests.iter().map(|m| (m.clone(), ())).collect();
        assert_eq!(listed, older, "{}", s.region);
        assert!(s.delete_chunks >= 2 && s.bytes_freed > 0, "{s:?}");
    }
    let keys = deploy_artifact::TrustedKeys::parse(&c.config.signing.trusted_keys)?;
    for region in ["east", "west"] {
        for b in &builds {
            c.store(region)?
                .get_trusted_manifest(&artifact(b)?, &keys)
                .await?;
        }
    }
    // The real run deletes exactly that; the kept artifact stays whole everywhere.
    let done = client.collect_garbage(false).await?;
    assert!(!done.dry_run);
    for region in ["east", "west"] {
        let store = c.store(region)?;
        for d in older.keys() {
            assert!(
                matches!(
                    store.get_manifest(&deploy_types::Digest::parse(d)?).await,
                    Err(deploy_artifact::StoreError::Missing { .. })
                ),
                "{region} {d}"
            );
        }
        let m = store
            .get_trusted_manifest(&deploy_types::Digest::parse(&newest)?, &keys)
            .await?;
        for ch in &m.chunks {
            store.get_chunk(&ch.digest, m.chunk_size).await?;
        }
    }
    // Nothing left to collect.
    let again = client.collect_garbage(true).await?;
    assert!(
        again
            .stores
            .iter()
            .all(|s| s.delete_manifests.is_empty() && s.delete_chunks == 0),
        "{again:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_logs_are_capped_and_commands_time_out() -> anyhow::Result<()> {
    let c = GrpcCluster::start_spec(spec()).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    // The test cluster caps logs at 1 MiB; this prints 3 MB.
    let noisy = repo.commit(
        "noisy",
        &[
            ("deploy.toml", RECIPE),
            ("build.sh", "yes 'a fairly long line of build output' | head -c 3000000\nmkdir -p out && echo x > out/app\n"),
        ],
    )?;
    let slow_recipe = RECIPE.replace("timeout_secs = 60", "timeout_secs = 1");
    let slow = repo.commit(
        "slow",
        &[("deploy.toml", &slow_recipe), ("build.sh", "sleep 30\n")],
    )?;
    let client = c.client()?;

    let b = client.submit_build("noisy", &repo.url(), &noisy).await?;
    let b = wait_final(&client, &b.id).await?;
    assert_eq!(b.state().name(), "SUCCEEDED", "{b:?}");
    let log = logs(&client, &b.id).await?;
    assert!(log.len() < 1024 * 1024 + 4096, "{} bytes of log", log.len());
    assert!(
        log.contains("log cut at 1048576 bytes"),
        "{}",
        &log[log.len().saturating_sub(300)..]
    );

    // Were the timeout not enforced, the 30 s sleep would end and the build would fail for
    // its missing output instead.
    let b = client.submit_build("slow", &repo.url(), &slow).await?;
    let b = wait_final(&client, &b.id).await?;
    assert_eq!(b.state().name(), "FAILED", "{b:?}");
    assert!(b.error.contains("timed out after 1s"), "{}", b.error);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_can_keep_its_artifacts_in_an_s3_bucket() -> anyhow::Result<()> {
    let moto = test_harness::s3::MotoServer::start().await?;
    moto.create_bucket("artifacts").await?;
    let c = GrpcCluster::start_spec(spec().s3_region("east", &moto.endpoint, "artifacts")).await?;
    let repo = GitRepo::init(&c.dir().join("repo"))?;
    let script = "echo building on s3\nmkdir -p out\nhead -c 300000 /dev/urandom > out/app\n";
    let sha = repo.commit("v1", &[("deploy.toml", RECIPE), ("build.sh", script)])?;
    let client = c.client()?;
    let b = client.submit_build("s3svc", &repo.url(), &sha).await?;
    let b = wait_final(&client, &b.id).await?;
    assert_eq!(b.state().name(), "SUCCEEDED", "{b:?}");
    assert!(
        b.replication.iter().all(|r| r.state().name() == "DONE"),
        "{:?}",
        b.replication
    );

    // The east store is the bucket: the manifest and chunks are read back from it, verified;
    // the other region received its copy from it.
    let keys = deploy_artifact::TrustedKeys::parse(&c.config.signing.trusted_keys)?;
    let east = c.store("east")?;
    assert!(
        east.name().starts_with("s3://artifacts/east"),
        "{}",
        east.name()
    );
    for store in [east, c.store("west")?] {
        let m = store.get_trusted_manifest(&artifact(&b)?, &keys).await?;
        assert!(m.chunks.len() >= 4, "{} chunks", m.chunks.len());
        for ch in &m.chunks {
            store.get_chunk(&ch.digest, m.chunk_size).await?;
        }
    }
    // The log lives in the bucket too; the east nodes serve the artifact from it.
    assert!(logs(&client, &b.id).await?.contains("building on s3"));
    let (status, _, body) = http_get(
        &c.addrs["east-1"],
        &format!("/v1/manifests/{}", b.artifact_digest),
        None,
    )
    .await?;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<deploy_artifact::Manifest>(&body).is_ok());
    // Retention lists the bucket and keeps the only build.
    let gc = client.collect_garbage(true).await?;
    let east_gc = gc
        .stores
        .iter()
        .find(|s| s.region == "east")
        .ok_or_else(|| anyhow::anyhow!("{gc:?}"))?;
    assert!(
        east_gc.kept_manifests == 1 && east_gc.delete_manifests.is_empty(),
        "{east_gc:?}"
    );
    Ok(())
}
