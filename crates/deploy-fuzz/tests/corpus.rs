//! The corpus replayed, the seeds checked to reach past each parser's front door, and a
//! short generated run per target: what `cargo xtask test` covers of the fuzz targets
//! (`cargo xtask fuzz` runs them for longer).

use deploy_fuzz::runner::{self, Budget};
use deploy_fuzz::{corpus_dir, seeds, TARGETS};
use deploy_state::StateMachine;

#[test]
fn every_corpus_input_keeps_every_promise() {
    for t in TARGETS {
        let corpus = runner::load_corpus(&corpus_dir().join(t.name)).unwrap();
        assert!(!corpus.is_empty(), "{}: no corpus", t.name);
        let broken = runner::replay(t.check, &corpus);
        assert!(broken.is_empty(), "{}: {broken:?}", t.name);
    }
}

#[test]
fn the_kept_corpus_holds_this_versions_seeds() {
    for (name, files) in seeds::all() {
        for (file, bytes) in files {
            let path = corpus_dir().join(name).join(format!("seed-{file}"));
            let kept = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -p deploy-fuzz -- seed`",
                    path.display()
                )
            });
            assert_eq!(
                kept,
                bytes,
                "{} is stale; run `cargo run -p deploy-fuzz -- seed`",
                path.display()
            );
        }
    }
}

#[test]
fn the_seeds_are_accepted_where_they_should_be() {
    for (file, text) in seeds::config() {
        let text = String::from_utf8(text).unwrap();
        deploy_types::ClusterConfig::parse(&text, &file).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    for (file, text) in seeds::recipe() {
        let text = String::from_utf8(text).unwrap();
        let ok = if file == "run.toml" {
            deploy_artifact::recipe::parse_run_toml(&text).is_ok()
        } else {
            deploy_artifact::Recipe::parse(&text).is_ok()
        };
        assert!(ok, "{file}");
    }
    let trusted = deploy_artifact::TrustedKeys::parse(&[seeds::corpus_key().public_hex()]).unwrap();
    let ms = seeds::manifests();
    assert!(trusted.verify(&ms[0]).is_ok() && trusted.verify(&ms[1]).is_ok());
    assert!(
        trusted.verify(&ms[2]).is_err(),
        "the unsigned seed verified"
    );
    // Only the good tar unpacks; each other one is refused for its own reason.
    for (file, tar) in seeds::unpack() {
        let dir = tempfile::tempdir().unwrap();
        let digest = deploy_types::Digest::of(&tar);
        let r = deploy_fanout::unpack::unpack(
            &tar[..],
            &dir.path().join("d"),
            &digest,
            tar.len() as u64,
        );
        assert_eq!(r.is_ok(), file == "good.tar", "{file}: {r:?}");
    }
    // The state the command target starts from took every seeding command.
    let mut state = deploy_state::GlobalState::default();
    for c in seeds::state_commands() {
        let r = state.apply(&c);
        let text = format!("{r:?}");
        assert!(!text.contains("Rejected"), "{c:?} was refused: {text}");
    }
    assert_eq!(state.builds.by_seq.len(), 3);
    let mut region = deploy_state::RegionalState::default();
    for c in seeds::region_state_commands() {
        let r = region.apply(&c);
        let text = format!("{r:?}");
        assert!(!text.contains("Rejected"), "{c:?} was refused: {text}");
    }
    assert_eq!(region.region.hosts.len(), 2);
}

#[test]
fn every_target_keeps_its_promises_over_generated_inputs() {
    for t in TARGETS {
        let seeds = runner::load_corpus(&corpus_dir().join(t.name))
            .unwrap()
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let r = runner::run(t, seeds, Budget::Cases(300), 42);
        assert!(r.failure.is_none(), "{}: {:?}", t.name, r.failure);
        assert_eq!(r.cases, 300);
    }
}
