//! The corpus's seeds, made here so they stay valid as the formats change: `deploy-fuzz seed`
//! writes them to `corpus/TARGET/seed-*`. Inputs a run found breaking a target are kept next
//! to them as `crash-*`.

use deploy_artifact::{ChunkRef, KeyPair, Manifest};
use deploy_state::builds::{BuildCommand, Outcome};
use deploy_state::region::RegionCommand;
use deploy_state::releases::{Action, ReleaseCommand, Strategy};
use deploy_state::tokens::{Role, Token, TokenCommand};
use deploy_state::{GlobalCommand as Command, RegionalCommand};

/// The key the corpus's manifests are signed with: fixed, public, for fuzzing only.
pub fn corpus_key() -> KeyPair {
    KeyPair::from_seed(&[7u8; 32])
}

/// Named inputs: (file name, bytes).
pub type Files = Vec<(String, Vec<u8>)>;

fn files(pairs: &[(&str, &str)]) -> Files {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
        .collect()
}

pub fn config() -> Files {
    let key = corpus_key().public_hex();
    let mut out = files(&[
        (
            "minimal.toml",
            "[cluster]\nname = \"one\"\n\n[[nodes]]\nid = \"g1\"\naddr = \"127.0.0.1:7001\"\n\n\
             [global]\nvoters = [\"g1\"]\n\n[security]\ninsecure = true\n",
        ),
        (
            "full.toml",
            "[cluster]\nname = \"prod\"\n\n[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 400\n\
             election_timeout_max_ms = 800\n\n[builds]\nlease_ms = 10000\nmax_attempts = 3\n\
             chunk_bytes = 65536\nsandbox_read_paths = [\"/opt/tools\"]\n\n\
             [signing]\nkey_file = \"keys/build.key\"\ntrusted_keys = [\"KEY\"]\n\n\
             [[nodes]]\nid = \"g1\"\naddr = \"10.0.0.1:7001\"\n[[nodes]]\nid = \"e1\"\naddr = \"10.0.1.1:7001\"\n\
             [[nodes]]\nid = \"s1\"\naddr = \"10.0.0.9:7001\"\njoin = [\"global\"]\n\n\
             [global]\nvoters = [\"g1\"]\n\n[[regions]]\nname = \"east\"\nvoters = [\"e1\"]\nstore = \"stores/east\"\n\n\
             [[workers]]\nid = \"wk\"\nregion = \"east\"\n\n[[racks]]\nregion = \"east\"\nname = \"rack-1\"\n\
             relays = [{ id = \"r1\", addr = \"10.0.1.10:7100\" }]\nhosts = [\"h1\", \"h2\"]\n\n\
             [security]\nca = \"certs/ca.pem\"\ncerts = \"certs\"\n",
        ),
    ]);
    for (_, text) in out.iter_mut() {
        *text = String::from_utf8_lossy(text)
            .replace("KEY", &key)
            .into_bytes();
    }
    out.push((
        "local.toml".into(),
        include_bytes!("../../../cluster-config/local.toml").to_vec(),
    ));
    out
}

pub fn recipe() -> Files {
    files(&[
        (
            "simple.toml",
            "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out\"]\n\n[run]\ncommand = \"./out/app\"\n",
        ),
        (
            "full.toml",
            "[build]\ncommand = \"make release\"\noutputs = [\"bin/app\", \"share/\"]\ntimeout_secs = 600\n\
             env = { GREETING = \"hi\", CC = \"clang\" }\n\n[run]\ncommand = \"./bin/app --port 8080\"\n\
             health_command = \"test -f ok\"\nhealth_url = \"http://127.0.0.1:8080/healthz\"\n",
        ),
        (
            "run.toml",
            "[run]\ncommand = \"./out/app\"\nhealth_command = \"./out/app --check\"\n",
        ),
    ])
}

/// A digest of one repeated hex digit (the same bytes the corpus was written with).
fn digest(fill: char) -> deploy_types::Digest {
    deploy_types::Digest::from_hex(&fill.to_string().repeat(64)).expect("a hex digit")
}

/// Manifests as workers make them: two signed with [`corpus_key`], one unsigned.
pub fn manifests() -> Vec<Manifest> {
    let key = corpus_key();
    let mut one = Manifest {
        version: 1,
        artifact_digest: digest('a'),
        size: 100,
        chunk_size: 64,
        chunks: vec![
            ChunkRef {
                digest: digest('b'),
                size: 64,
            },
            ChunkRef {
                digest: digest('c'),
                size: 36,
            },
        ],
        service: "web".into(),
        build_id: "b-1".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        signature: None,
    };
    let unsigned = one.clone();
    key.sign(&mut one);
    let mut empty = Manifest {
        artifact_digest: digest('e'),
        size: 0,
        chunks: vec![],
        build_id: "b-2".into(),
        ..unsigned.clone()
    };
    key.sign(&mut empty);
    vec![one, empty, unsigned]
}

pub fn manifest() -> Files {
    manifests()
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let text = serde_json::to_vec_pretty(m).unwrap_or_default();
            (format!("manifest-{i}.json"), text)
        })
        .collect()
}

/// A tar of raw entries: (path, kind, content or link target), written byte for byte so
/// hostile names survive.
fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o755);
        let name = h.as_old_mut().name.as_mut();
        let n = path.len().min(name.len());
        name[..n].copy_from_slice(&path.as_bytes()[..n]);
        let body: &[u8] = if kind.is_symlink() || kind.is_hard_link() {
            let link = h.as_old_mut().linkname.as_mut();
            let n = content.len().min(link.len());
            link[..n].copy_from_slice(&content.as_bytes()[..n]);
            &[]
        } else {
            content.as_bytes()
        };
        h.set_size(body.len() as u64);
        h.set_cksum();
        // In-memory writes do not fail.
        let _ = b.append(&h, body);
    }
    b.into_inner().unwrap_or_default()
}

pub fn unpack() -> Files {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    vec![
        (
            "good.tar".into(),
            tar_of(&[
                ("out/", Directory, ""),
                ("out/app", Regular, "#!/bin/sh\necho hi\n"),
                ("out/link", Symlink, "app"),
                (".deploy/run.toml", Regular, "command = \"./out/app\"\n"),
            ]),
        ),
        ("climbs.tar".into(), tar_of(&[("../escaped", Regular, "x")])),
        ("absolute.tar".into(), tar_of(&[("/tmp/abs", Regular, "x")])),
        (
            "link-out.tar".into(),
            tar_of(&[
                ("out/l", Symlink, "../../etc"),
                ("out/l/passwd", Regular, "x"),
            ]),
        ),
        (
            "link-up.tar".into(),
            tar_of(&[("out/l", Symlink, "../.."), ("out/l/planted", Regular, "x")]),
        ),
        (
            "hardlink.tar".into(),
            tar_of(&[("a", Regular, "x"), ("b", Link, "/etc/passwd")]),
        ),
        (
            "through-link.tar".into(),
            tar_of(&[("d", Symlink, "."), ("d/d/../../x", Regular, "x")]),
        ),
        (
            "link-chain.tar".into(),
            tar_of(&[
                ("d/l", Symlink, ".."),
                ("d/l/x", Symlink, ".."),
                ("d/l/x/evil", Regular, "x"),
            ]),
        ),
        (
            "link-via-link.tar".into(),
            tar_of(&[("d/l", Symlink, ".."), ("x", Symlink, "d/l/../..")]),
        ),
    ]
}

/// Commands that give the global state the fuzzed commands act on something to act on: builds
/// queued, leased and succeeded, a release, a token, a metadata key.
pub fn state_commands() -> Vec<Command> {
    let commit = |c: char| c.to_string().repeat(40);
    let submit = |c: char| {
        Command::Build(BuildCommand::Submit {
            service: "web".into(),
            repo: "https://git.example/web.git".into(),
            commit: commit(c),
            now_ms: 1_000,
            by: Some("ci".into()),
            max_queued: None,
        })
    };
    vec![
        Command::SetMeta {
            key: "owner".into(),
            value: Some("ops".into()),
        },
        submit('a'),
        submit('b'),
        submit('c'),
        Command::Build(BuildCommand::RegisterWorker {
            worker: "wk".into(),
            region: "east".into(),
            now_ms: 1_100,
        }),
        Command::Build(BuildCommand::Acquire {
            worker: "wk".into(),
            now_ms: 1_200,
            lease_ms: 10_000,
        }),
        Command::Build(BuildCommand::Complete {
            id: "b-1".into(),
            worker: "wk".into(),
            attempt: 1,
            now_ms: 1_300,
            outcome: Outcome::Built {
                artifact_digest: digest('a'),
                artifact_size: 100,
            },
            regions: vec!["east".into()],
            max_attempts: 3,
        }),
        Command::Build(BuildCommand::Acquire {
            worker: "wk".into(),
            now_ms: 1_400,
            lease_ms: 10_000,
        }),
        Command::Release(ReleaseCommand::Create {
            service: "web".into(),
            build_id: "b-1".into(),
            regions: vec!["east".into()],
            strategy: Strategy::default(),
            by: "ci".into(),
            now_ms: 1_500,
            known_regions: vec!["east".into()],
            request_id: Some("req-1".into()),
        }),
        Command::Token(TokenCommand::Create {
            token: Token {
                name: "ci".into(),
                sha256: "d".repeat(64),
                role: Role::Releaser,
                services: vec!["web".into()],
                created_by: "admin".into(),
                created_at_ms: 1_600,
            },
            regions: vec!["east".into()],
        }),
    ]
}

/// Commands as the fuzzer starts from: each kind, with values that reach past the checks.
pub fn commands() -> Vec<Command> {
    let mut out = state_commands();
    out.extend([
        Command::Build(BuildCommand::Renew {
            id: "b-2".into(),
            worker: "wk".into(),
            attempt: 1,
            now_ms: 1_700,
            lease_ms: 10_000,
        }),
        Command::Build(BuildCommand::Cancel {
            id: "b-3".into(),
            now_ms: 1_800,
            by: None,
        }),
        Command::Once {
            request_id: "0123456789abcdef".into(),
            now_ms: 99_000,
            cmd: Box::new(Command::SetMeta {
                key: "k".into(),
                value: Some("v".into()),
            }),
        },
        Command::Build(BuildCommand::ExpireLeases {
            now_ms: 99_999,
            max_attempts: 3,
            leases: vec![deploy_state::builds::LeaseVersion {
                seq: 1,
                attempt: 1,
                renewals: 2,
            }],
        }),
        Command::Release(ReleaseCommand::Act {
            id: "r-1".into(),
            action: Action::Pause,
            by: "ops".into(),
            reason: "looking".into(),
            now_ms: 1_900,
            request_id: None,
        }),
        Command::Token(TokenCommand::Revoke {
            name: "ci".into(),
            by: "admin".into(),
            now_ms: 2_000,
            regions: vec!["east".into()],
        }),
        Command::SetMeta {
            key: "owner".into(),
            value: None,
        },
    ]);
    let batch = Command::Batch(out.iter().take(4).cloned().collect());
    out.push(batch);
    out.push(Command::Collect(deploy_state::retention::Collect {
        now_ms: 10_000_000,
        keep_per_service: 1,
        keep_ms: 0,
        artifact_keep: 1,
        history_ms: 86_400_000,
        decisions_upto: 1,
    }));
    out
}

/// A region's commands as the fuzzer starts from: hosts and a relay registered, a wave
/// judged, hosts forgotten, and a batch.
pub fn region_state_commands() -> Vec<RegionalCommand> {
    vec![
        RegionalCommand::SetMeta {
            key: "owner".into(),
            value: Some("ops".into()),
        },
        RegionalCommand::Once {
            request_id: "fedcba9876543210".into(),
            now_ms: 1_000,
            cmd: Box::new(RegionalCommand::SetMeta {
                key: "team".into(),
                value: Some("infra".into()),
            }),
        },
        RegionalCommand::Region(RegionCommand::RegisterHosts {
            hosts: vec![
                ("east-1-h1".into(), "rack-1".into()),
                ("east-1-h2".into(), "rack-1".into()),
            ],
        }),
        RegionalCommand::Region(RegionCommand::RegisterRelay {
            relay: "east-rack-1-relay".into(),
            rack: "rack-1".into(),
        }),
    ]
}

pub fn region_commands() -> Vec<RegionalCommand> {
    let mut out = region_state_commands();
    out.extend([
        RegionalCommand::Region(RegionCommand::Settle {
            id: "r-1".into(),
            keep: vec!["east-1-h1".into()],
            now_ms: 2_000,
        }),
        RegionalCommand::Region(RegionCommand::Forget {
            hosts: vec!["east-1-h1".into()],
            relays: vec!["east-rack-1-relay".into()],
        }),
        RegionalCommand::Region(RegionCommand::Collect {
            now_ms: 3_000,
            keep_per_service: 1,
            keep_ms: 0,
        }),
    ]);
    let batch = RegionalCommand::Batch(out.iter().take(3).cloned().collect());
    out.push(batch);
    out
}

/// Commands encoded as the log stores them, and one inside its log entry.
fn encoded<C: deploy_raft::GroupTypes>(
    prefix: &str,
    cmds: Vec<deploy_raft::types::Cmd<C>>,
) -> Files {
    let second = cmds.get(1).cloned();
    let mut out: Files = cmds
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let bytes = deploy_raft::codec::encode("command", c).unwrap_or_default();
            (format!("{prefix}-{i:02}.bin"), bytes)
        })
        .collect();
    if let Some(cmd) = second {
        let entry: openraft::Entry<C> = openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            payload: openraft::EntryPayload::Normal(cmd),
        };
        if let Ok(bytes) = deploy_raft::codec::encode("entry", &entry) {
            out.push(("entry.bin".into(), bytes));
        }
    }
    out
}

pub fn command() -> Files {
    encoded::<deploy_raft::GlobalTypes>("command", commands())
}

pub fn region_command() -> Files {
    encoded::<deploy_raft::RegionTypes>("region-command", region_commands())
}

/// Every target's seeds, by target name.
pub fn all() -> Vec<(&'static str, Files)> {
    vec![
        ("config", config()),
        ("recipe", recipe()),
        ("manifest", manifest()),
        ("unpack", unpack()),
        ("command", command()),
        ("region-command", region_command()),
    ]
}
