//! Running a target: over its corpus once, or over generated inputs for a bounded time or
//! number of cases, keeping the smallest input that breaks it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use sha2::Digest;

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub target: &'static str,
    pub seeds: usize,
    pub cases: u64,
    pub took: Duration,
    /// The smallest input found breaking the target, and why.
    pub failure: Option<(Vec<u8>, String)>,
}

/// The files of `dir` (a target's corpus), in name order; none if it does not exist.
pub fn load_corpus(dir: &Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_file() {
            out.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path())?,
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `check` once, a panic counted as a broken promise.
pub fn check_one(check: fn(&[u8]) -> Result<(), String>, input: &[u8]) -> Result<(), String> {
    match std::panic::catch_unwind(|| check(input)) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "panicked: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)")
        )),
    }
}

/// Checks every corpus input: the names of those that break the target, with why.
pub fn replay(
    check: fn(&[u8]) -> Result<(), String>,
    corpus: &[(String, Vec<u8>)],
) -> Vec<(String, String)> {
    corpus
        .iter()
        .filter_map(|(name, data)| check_one(check, data).err().map(|e| (name.clone(), e)))
        .collect()
}

/// How long or how much to run.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Time(Duration),
    Cases(u32),
}

/// Runs generated inputs from `seeds` through `target` within `budget`, starting from `seed`
/// (the same seed and budget in cases give the same inputs).
pub fn run(
    target: &'static crate::Target,
    seeds: Vec<Vec<u8>>,
    budget: Budget,
    seed: u64,
) -> Report {
    let started = Instant::now();
    let n_seeds = seeds.len();
    let strategy = crate::mutate::inputs(seeds);
    let check = target.check;
    let mut cases = 0u64;
    let mut batch = 0u64;
    let failure = loop {
        let size = match budget {
            Budget::Cases(n) => n,
            Budget::Time(_) => 256,
        };
        let config = Config {
            cases: size,
            failure_persistence: None,
            max_shrink_iters: 4096,
            max_shrink_time: 30_000,
            ..Config::default()
        };
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&batch.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&strategy, |input| {
            check_one(check, &input).map_err(TestCaseError::fail)
        });
        cases += u64::from(size);
        batch += 1;
        match result {
            Ok(()) => {}
            Err(TestError::Fail(_, input)) => {
                // proptest shrinks the mutations, not the seed under them: cut further.
                let input = minimize(check, input);
                let why = check_one(check, &input).err().unwrap_or_default();
                break Some((input, why));
            }
            Err(TestError::Abort(why)) => break Some((Vec::new(), format!("aborted: {why}"))),
        }
        match budget {
            Budget::Cases(_) => break None,
            Budget::Time(t) if started.elapsed() >= t => break None,
            Budget::Time(_) => {}
        }
    };
    Report {
        target: target.name,
        seeds: n_seeds,
        cases,
        took: started.elapsed(),
        failure,
    }
}

/// The smallest input found, by deleting ever smaller pieces of `input`, that still breaks
/// `check` (a few thousand checks at most).
pub fn minimize(check: fn(&[u8]) -> Result<(), String>, mut input: Vec<u8>) -> Vec<u8> {
    let mut budget = 4096u32;
    let mut piece = (input.len() / 2).max(1);
    while piece >= 1 && budget > 0 {
        let mut at = 0;
        let mut cut_any = false;
        while at < input.len() && budget > 0 {
            budget -= 1;
            let end = (at + piece).min(input.len());
            let mut shorter = input.clone();
            shorter.drain(at..end);
            if check_one(check, &shorter).is_err() {
                input = shorter;
                cut_any = true;
            } else {
                at += piece;
            }
        }
        if !cut_any {
            if piece == 1 {
                break;
            }
            piece /= 2;
        }
    }
    input
}

/// Keeps a breaking input in the corpus (`crash-<sha256 prefix>`), so tests replay it.
pub fn save_failure(dir: &Path, input: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = format!("crash-{}", &hex::encode(sha2::Sha256::digest(input))[..16]);
    let path = dir.join(name);
    std::fs::write(&path, input)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_climbing(data: &[u8]) -> Result<(), String> {
        if data.windows(3).any(|w| w == b"../") {
            return Err("climbs".into());
        }
        Ok(())
    }

    const CLIMB: crate::Target = crate::Target {
        name: "climb",
        what: "a target that breaks on ../",
        check: no_climbing,
    };

    #[test]
    fn a_broken_promise_is_found_and_shrunk() {
        static T: crate::Target = CLIMB;
        let r = run(&T, vec![b"out/app".to_vec()], Budget::Cases(5000), 1);
        let (input, why) = r.failure.expect("the runner found nothing");
        assert_eq!(why, "climbs");
        assert_eq!(input, b"../", "not shrunk to the smallest input");
    }

    #[test]
    fn a_panic_counts_as_a_failure() {
        fn panics(_: &[u8]) -> Result<(), String> {
            panic!("boom")
        }
        assert_eq!(check_one(panics, b""), Err("panicked: boom".into()));
    }
}
