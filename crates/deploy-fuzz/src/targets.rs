//! The targets: each reads bytes as its parser's callers do, and checks what the parser
//! promises. `Ok` means the input was handled (accepted or refused cleanly); `Err` names the
//! promise broken.

use std::path::Path;

use deploy_artifact::recipe::{is_contained, parse_run_toml};
use deploy_artifact::{Manifest, Recipe, TrustedKeys};
use deploy_raft::codec;
use deploy_raft::types::Cmd;
use deploy_raft::{GlobalTypes, GroupTypes, RegionTypes};
use deploy_state::{GlobalState, RegionalState, Response, StateMachine};

/// A fuzz target.
pub struct Target {
    pub name: &'static str,
    /// What it exercises.
    pub what: &'static str,
    pub check: fn(&[u8]) -> Result<(), String>,
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "config",
        what: "the cluster config parser and its validation",
        check: config,
    },
    Target {
        name: "recipe",
        what: "a repository's deploy.toml, and the run section artifacts carry",
        check: recipe,
    },
    Target {
        name: "manifest",
        what: "the manifest decoder and signature check",
        check: manifest,
    },
    Target {
        name: "unpack",
        what: "the artifact tar unpacker on hosts",
        check: unpack,
    },
    Target {
        name: "command",
        what: "the global state machine's command decoder (commands and log entries) and apply",
        check: command,
    },
    Target {
        name: "region-command",
        what: "a regional state machine's command decoder (commands and log entries) and apply",
        check: region_command,
    },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn config(data: &[u8]) -> Result<(), String> {
    // The file is read as UTF-8 before it is parsed; other bytes are refused there.
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    let Ok(c) = deploy_types::ClusterConfig::parse(text, "fuzz") else {
        return Ok(());
    };
    for n in c.nodes() {
        deploy_types::config::check_addr(&n.addr)
            .map_err(|e| format!("accepted node {} at {:?}: {e}", n.id, n.addr))?;
    }
    if c.nodes().is_empty() {
        return Err("accepted a config without nodes".into());
    }
    let again = deploy_types::ClusterConfig::parse(text, "fuzz")
        .map_err(|e| format!("the same text parsed, then did not: {e}"))?;
    if format!("{again:?}") != format!("{c:?}") {
        return Err("the same text parsed to two configs".into());
    }
    Ok(())
}

fn recipe(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    // Hosts parse the run section an artifact carries, written by a worker from a recipe.
    let _ = parse_run_toml(text);
    let Ok(r) = Recipe::parse(text) else {
        return Ok(());
    };
    for o in &r.build.outputs {
        if !is_contained(o) {
            return Err(format!("accepted an output outside the repository: {o:?}"));
        }
    }
    if r.build.command.trim().is_empty() || r.run.command.trim().is_empty() {
        return Err("accepted an empty command".into());
    }
    let run = parse_run_toml(&r.run_toml())
        .map_err(|e| format!("the run section written for an artifact does not parse: {e}"))?;
    if run != r.run {
        return Err(format!(
            "the run section changed on its way: {:?} became {run:?}",
            r.run
        ));
    }
    Ok(())
}

fn manifest(data: &[u8]) -> Result<(), String> {
    let Ok(m) = Manifest::decode(data) else {
        return Ok(());
    };
    let bytes = serde_json::to_vec(&m).map_err(|e| format!("cannot encode: {e}"))?;
    let again =
        Manifest::decode(&bytes).map_err(|e| format!("its own encoding is refused: {e}"))?;
    if again != m {
        return Err("the manifest changed through its own encoding".into());
    }
    let trusted = TrustedKeys::parse(&[crate::seeds::corpus_key().public_hex()])
        .map_err(|e| format!("the corpus key: {e}"))?;
    if trusted.verify(&m).is_ok() && !crate::seeds::manifests().contains(&m) {
        return Err("a changed manifest kept a valid signature".into());
    }
    Ok(())
}

/// The directory entries under `dir`, recursively, not following links.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if std::fs::symlink_metadata(&p)?.is_dir() {
            walk(&p, out)?;
        }
        out.push(p);
    }
    Ok(())
}

/// `data` with the checksum of each tar header it walks through made right: without it,
/// nearly every mutation of a header is refused for its checksum alone, and the unpacker's
/// own checks are never reached.
pub fn fix_tar_checksums(data: &mut [u8]) {
    let mut at = 0usize;
    while at + 512 <= data.len() {
        let block = &mut data[at..at + 512];
        if block.iter().all(|b| *b == 0) {
            return;
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(block);
        header.set_cksum();
        block.copy_from_slice(header.as_bytes());
        let body = header
            .entry_size()
            .unwrap_or(0)
            .div_ceil(512)
            .saturating_mul(512);
        match usize::try_from(body)
            .ok()
            .and_then(|b| at.checked_add(512 + b))
        {
            Some(next) => at = next,
            None => return,
        }
    }
}

fn unpack(data: &[u8]) -> Result<(), String> {
    unpack_as_is(data)?;
    let mut fixed = data.to_vec();
    fix_tar_checksums(&mut fixed);
    unpack_as_is(&fixed)
}

fn unpack_as_is(data: &[u8]) -> Result<(), String> {
    // The release directory sits a few levels down, so a write that climbs (a chain of
    // links, `..`) lands where it is seen.
    let top = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let io = |e: std::io::Error| format!("cannot look at what it wrote: {e}");
    let outer = top.path().join("a/b/c");
    std::fs::create_dir_all(&outer).map_err(io)?;
    let dest = outer.join("dest");
    let digest = deploy_types::Digest::of(data);
    let result = deploy_fanout::unpack::unpack(data, &dest, &digest, data.len() as u64);
    for (level, only) in [
        (top.path().to_path_buf(), "a"),
        (top.path().join("a"), "b"),
        (top.path().join("a/b"), "c"),
        (outer.clone(), "dest"),
    ] {
        let outside: Vec<_> = std::fs::read_dir(&level)
            .map_err(io)?
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != only)
            .collect();
        if !outside.is_empty() {
            return Err(format!(
                "wrote outside its directory, in {}: {outside:?}",
                level.display()
            ));
        }
    }
    let outer = outer.as_path();
    match result {
        Err(_) if dest.exists() => return Err("a refused artifact left files behind".into()),
        Err(_) => {}
        Ok(()) => {
            let root = std::fs::canonicalize(&dest).map_err(io)?;
            let mut entries = Vec::new();
            walk(&dest, &mut entries).map_err(io)?;
            for p in entries {
                let meta = std::fs::symlink_metadata(&p).map_err(io)?;
                let kind = meta.file_type();
                if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
                    return Err(format!("made a special file: {}", p.display()));
                }
                // A link may dangle, but every step of where it leads must be inside.
                if kind.is_symlink() {
                    let target = std::fs::read_link(&p).map_err(io)?;
                    let mut at = p.parent().map(Path::to_path_buf).unwrap_or_default();
                    for c in target.components() {
                        at.push(c);
                        if let Ok(to) = std::fs::canonicalize(&at) {
                            if !to.starts_with(&root) {
                                return Err(format!(
                                    "{} leads outside: {}",
                                    p.display(),
                                    to.display()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    // The same bytes under another digest: refused, and nothing left.
    let other = outer.join("other");
    let wrong = deploy_types::Digest::from_bytes([0; 32]);
    if deploy_fanout::unpack::unpack(data, &other, &wrong, data.len() as u64).is_ok() {
        return Err("unpacked under a digest that is not its own".into());
    }
    if other.exists() {
        return Err("a refused artifact left files behind".into());
    }
    Ok(())
}

fn refused(r: &Response) -> bool {
    matches!(
        r,
        Response::Rejected(_)
            | Response::BuildRejected(_)
            | Response::ReleaseRejected(_)
            | Response::TokenRejected(_)
    )
}

/// The state global commands act on: see [`crate::seeds::state_commands`].
fn seeded_state() -> GlobalState {
    let mut s = GlobalState::default();
    for c in crate::seeds::state_commands() {
        s.apply(&c);
    }
    s
}

fn command(data: &[u8]) -> Result<(), String> {
    applies_alike::<GlobalTypes>(data, seeded_state())
}

fn region_command(data: &[u8]) -> Result<(), String> {
    let mut base = RegionalState::default();
    for c in crate::seeds::region_state_commands() {
        base.apply(&c);
    }
    applies_alike::<RegionTypes>(data, base)
}

/// A command of kind `C` (bare, or inside a log entry): a refusal changes nothing, a batch
/// answers once per command, two replicas end alike, and its encoding round-trips.
fn applies_alike<C: GroupTypes>(data: &[u8], base: C::State) -> Result<(), String> {
    let cmd = match codec::decode::<Cmd<C>>("fuzzed command", data) {
        Ok(c) => c,
        Err(_) => match codec::decode::<openraft::Entry<C>>("fuzzed entry", data) {
            Ok(openraft::Entry {
                payload: openraft::EntryPayload::Normal(c),
                ..
            }) => c,
            _ => return Ok(()),
        },
    };
    let mut state = base.clone();
    let response = state.apply(&cmd);
    if refused(&response) && state != base {
        return Err(format!("a refused command changed the state: {response:?}"));
    }
    if let Response::Batch(responses) = &response {
        if let Some(n) = C::State::batch_len(&cmd) {
            if responses.len() != n {
                return Err("a batch answered for another number of commands".into());
            }
        }
    }
    // Every replica applies the same entry to the same state and must end the same.
    let mut replica = base.clone();
    let again = replica.apply(&cmd);
    if again != response || replica != state {
        return Err("applying the same command to the same state differed".into());
    }
    let bytes = codec::encode("command", &cmd).map_err(|e| format!("cannot encode: {e}"))?;
    let back: Cmd<C> = codec::decode("command", &bytes)
        .map_err(|e| format!("its own encoding is refused: {e}"))?;
    if back != cmd {
        return Err("the command changed through its own encoding".into());
    }
    Ok(())
}
