//! Scenario files (`chaos/scenarios/*.toml`): the cluster's shape, the workload's pace and
//! the mix of faults. Parsing refuses unknown fields and names every problem at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fault::FaultKind;

/// Scenario files larger than this are refused: they are short hand-written text.
const MAX_SCENARIO_BYTES: u64 = 64 * 1024;

/// A `[lo, hi]` range in milliseconds, drawn from uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range(pub u64, pub u64);

impl Range {
    fn check(&self, what: &str, problems: &mut Vec<String>) {
        if self.0 > self.1 {
            problems.push(format!("{what}: [{}, {}] is not a range", self.0, self.1));
        }
        if self.1 > 3_600_000 {
            problems.push(format!("{what}: {} ms is over an hour", self.1));
        }
    }
}

/// The cluster a scenario runs: every process is a separate `deployd` on loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shape {
    /// Voters of the global group.
    pub global: usize,
    /// Region names; each region has `region_nodes` voters, its own store and its racks.
    pub regions: Vec<String>,
    pub region_nodes: usize,
    pub racks_per_region: usize,
    pub hosts_per_rack: usize,
    /// Build workers per region.
    pub workers_per_region: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            global: 3,
            regions: vec!["east".into(), "west".into()],
            region_nodes: 3,
            racks_per_region: 2,
            hosts_per_rack: 2,
            workers_per_region: 1,
        }
    }
}

/// How hard the clients push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Between two build submissions.
    pub build_every_ms: Range,
    /// Between two releases.
    pub release_every_ms: Range,
    /// Between two operator actions (pause, resume, promote, abort, rollback).
    pub action_every_ms: Range,
    /// Between two reads of one reader.
    pub read_every_ms: Range,
    /// Readers reading builds and releases at once.
    pub readers: usize,
    /// Share of commits whose health check fails once deployed (their releases roll back).
    pub unhealthy_pct: u32,
    /// Share of new commits submitted through two nodes at once (one build must come of it).
    pub same_commit_twice_pct: u32,
    /// Bytes of random data in each artifact (so transfers take a while).
    pub artifact_bytes: u64,
    /// Each call's deadline; past it the outcome is unknown.
    pub call_timeout_ms: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            build_every_ms: Range(2_000, 4_000),
            release_every_ms: Range(8_000, 14_000),
            action_every_ms: Range(4_000, 8_000),
            read_every_ms: Range(150, 400),
            readers: 2,
            unhealthy_pct: 15,
            same_commit_twice_pct: 15,
            artifact_bytes: 384 * 1024,
            call_timeout_ms: 5_000,
        }
    }
}

/// Which faults, how often, for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Between the starts of two faults.
    pub every_ms: Range,
    /// How long one fault lasts before it heals (a kill: until the restart).
    pub hold_ms: Range,
    /// Faults in effect at once, at most.
    pub max_concurrent: usize,
    /// No fault before this much of the workload has run.
    pub warmup_ms: u64,
    /// Relative weights of the fault kinds; a kind not named is never injected.
    pub weights: BTreeMap<FaultKind, u32>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            every_ms: Range(3_000, 6_000),
            hold_ms: Range(1_500, 4_000),
            max_concurrent: 1,
            warmup_ms: 4_000,
            weights: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// How long faults are injected, unless `--duration` says otherwise.
    #[serde(default = "default_duration")]
    pub duration_secs: u64,
    /// How long the cluster has, once healed, to finish every build and release and bring
    /// every host to its goal.
    #[serde(default = "default_converge")]
    pub converge_within_secs: u64,
    #[serde(default)]
    pub cluster: Shape,
    #[serde(default)]
    pub workload: Workload,
    pub faults: Faults,
}

fn default_duration() -> u64 {
    60
}

fn default_converge() -> u64 {
    180
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {path} is {size} bytes, over the {MAX_SCENARIO_BYTES}-byte limit")]
    TooLarge { path: String, size: u64 },
    #[error("scenario {origin} does not parse: {message}")]
    Parse { origin: String, message: String },
    #[error("scenario {origin} is invalid:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
    #[error("no scenario {name:?} in {dir} (there are: {known})")]
    Unknown {
        name: String,
        dir: String,
        known: String,
    },
}

/// The directory of the shipped scenarios.
pub fn scenario_dir() -> PathBuf {
    package_dir().join("scenarios")
}

/// This package's directory: as cargo says at run time, else as it was at build time (a
/// binary shared between clones through one target directory must look at its own clone).
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
}

/// The names of the scenarios in `dir`, sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".toml").map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

impl Scenario {
    /// A scenario by name from `dir`, or from a path to a `.toml` file.
    pub fn find(name_or_path: &str, dir: &Path) -> Result<Self, ScenarioError> {
        let as_path = Path::new(name_or_path);
        if name_or_path.ends_with(".toml") {
            return Self::load(as_path);
        }
        let valid = !name_or_path.is_empty()
            && name_or_path
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let path = dir.join(format!("{name_or_path}.toml"));
        if !valid || !path.is_file() {
            return Err(ScenarioError::Unknown {
                name: name_or_path.chars().take(64).collect(),
                dir: dir.display().to_string(),
                known: list(dir).join(", "),
            });
        }
        Self::load(&path)
    }

    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let shown = path.display().to_string();
        let io = |source| ScenarioError::Io {
            path: shown.clone(),
            source,
        };
        let size = std::fs::metadata(path).map_err(io)?.len();
        if size > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge { path: shown, size });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, &shown)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let problems = s.problems();
        if !problems.is_empty() {
            return Err(ScenarioError::Invalid {
                origin: origin.to_string(),
                problems,
            });
        }
        Ok(s)
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            p.push(format!("name {:?}: expected [a-z0-9-]+", self.name));
        }
        let c = &self.cluster;
        if !(1..=7).contains(&c.global) {
            p.push(format!("cluster.global ({}) must be 1-7", c.global));
        }
        if c.regions.is_empty() || c.regions.len() > 4 {
            p.push("cluster.regions: name 1-4 regions".into());
        }
        for r in &c.regions {
            if r.is_empty() || r.len() > 20 || !r.bytes().all(|b| b.is_ascii_lowercase()) {
                p.push(format!(
                    "cluster.regions: {r:?} must be 1-20 lowercase letters"
                ));
            }
        }
        if !(1..=7).contains(&c.region_nodes) {
            p.push(format!(
                "cluster.region_nodes ({}) must be 1-7",
                c.region_nodes
            ));
        }
        if !(1..=8).contains(&c.racks_per_region) || !(1..=8).contains(&c.hosts_per_rack) {
            p.push("cluster.racks_per_region and hosts_per_rack must be 1-8".into());
        }
        if !(1..=4).contains(&c.workers_per_region) {
            p.push("cluster.workers_per_region must be 1-4".into());
        }
        let w = &self.workload;
        w.build_every_ms.check("workload.build_every_ms", &mut p);
        w.release_every_ms
            .check("workload.release_every_ms", &mut p);
        w.action_every_ms.check("workload.action_every_ms", &mut p);
        w.read_every_ms.check("workload.read_every_ms", &mut p);
        if w.build_every_ms.0 < 100 || w.release_every_ms.0 < 100 || w.read_every_ms.0 < 10 {
            p.push("workload: intervals that short would flood a 2-core machine".into());
        }
        if w.readers > 16 {
            p.push("workload.readers must be at most 16".into());
        }
        if w.unhealthy_pct > 100 || w.same_commit_twice_pct > 100 {
            p.push("workload.unhealthy_pct and same_commit_twice_pct must be 0-100".into());
        }
        if !(1024..=64 * 1024 * 1024).contains(&w.artifact_bytes) {
            p.push("workload.artifact_bytes must be 1 KiB-64 MiB".into());
        }
        if !(500..=60_000).contains(&w.call_timeout_ms) {
            p.push("workload.call_timeout_ms must be 500-60000".into());
        }
        let f = &self.faults;
        f.every_ms.check("faults.every_ms", &mut p);
        f.hold_ms.check("faults.hold_ms", &mut p);
        if f.every_ms.0 < 200 {
            p.push("faults.every_ms must start at 200 ms or more".into());
        }
        if !(1..=8).contains(&f.max_concurrent) {
            p.push("faults.max_concurrent must be 1-8".into());
        }
        if f.weights.is_empty() || f.weights.values().all(|w| *w == 0) {
            p.push("faults.weights: give at least one fault kind a weight above 0".into());
        }
        if !(1..=86_400).contains(&self.duration_secs) {
            p.push("duration_secs must be 1-86400".into());
        }
        if !(10..=3_600).contains(&self.converge_within_secs) {
            p.push("converge_within_secs must be 10-3600".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses() {
        let names = list(&scenario_dir());
        for required in [
            "leader-kills",
            "rolling-restarts",
            "partitions",
            "worker-deaths",
            "relay-failures",
            "agent-crashes",
            "disk-full",
            "everything-at-once",
        ] {
            assert!(names.contains(&required.to_string()), "{required} missing");
        }
        for n in names {
            let s = Scenario::find(&n, &scenario_dir()).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.name, n, "the file name and the scenario's name differ");
        }
    }

    #[test]
    fn a_bad_scenario_names_every_problem() {
        let text = r#"
            name = "Bad Name"
            description = ""
            duration_secs = 0
            [cluster]
            global = 9
            [faults]
            every_ms = [5, 1]
        "#;
        let e = Scenario::parse(text, "t").unwrap_err().to_string();
        for needle in [
            "name",
            "cluster.global",
            "faults.every_ms",
            "weights",
            "duration_secs",
        ] {
            assert!(e.contains(needle), "{needle} not named in: {e}");
        }
        let unknown = Scenario::parse(
            "name = \"a\"\ndescription = \"\"\nbogus = 1\n[faults]\n",
            "t",
        );
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn an_unknown_scenario_lists_the_known_ones() {
        let e = Scenario::find("no-such", &scenario_dir())
            .unwrap_err()
            .to_string();
        assert!(e.contains("leader-kills"), "{e}");
        let e = Scenario::find("../etc/passwd", &scenario_dir()).unwrap_err();
        assert!(matches!(e, ScenarioError::Unknown { .. }));
    }
}
