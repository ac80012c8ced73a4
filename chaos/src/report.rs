//! A run's report: what was injected, what the clients did, what was checked and what broke,
//! printed for people and written as JSON for tests and `docs/reliability.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::check::Verdict;
use crate::cluster::Exit;
use crate::fault::Planned;
use crate::history::Op;
use crate::inject::Injected;

#[derive(Debug, Clone, Default, Serialize)]
pub struct OpCounts {
    pub invoked: usize,
    pub acknowledged: usize,
    /// Refused definitely (nothing changed).
    pub refused: usize,
    /// Outcome unknown (a timeout, a lost connection).
    pub unknown: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_ms: u64,
    /// The deployd binary the cluster ran.
    pub binary: String,
    /// The command that replays this run.
    pub replay: String,
    pub cluster: String,
    pub planned: Vec<Planned>,
    pub faults: Vec<Injected>,
    /// Faults that took effect, by kind.
    pub faults_by_kind: BTreeMap<String, usize>,
    pub faults_injected: usize,
    pub faults_skipped: usize,
    pub ops: BTreeMap<String, OpCounts>,
    pub ops_total: OpCounts,
    pub invariants: Vec<Verdict>,
    pub violations: Vec<String>,
    /// From the moment every fault healed until every group, build, release and host had
    /// converged; `None` if they did not within the bound.
    pub converged_after_ms: Option<u64>,
    pub hosts: usize,
    pub hosts_converged: usize,
    /// How the builds and releases ended (as the global group holds them after healing).
    pub builds_by_state: BTreeMap<String, usize>,
    pub releases_by_state: BTreeMap<String, usize>,
    pub linearizable: bool,
    pub exits: Vec<Exit>,
    /// Where the run's processes kept their data and logs (kept when something broke).
    pub dir: String,
    pub wall_ms: u64,
}

pub fn count_ops(history: &[Op]) -> (BTreeMap<String, OpCounts>, OpCounts) {
    let mut by: BTreeMap<String, OpCounts> = BTreeMap::new();
    let mut total = OpCounts::default();
    for op in history {
        for c in [
            by.entry(op.kind.name().to_string()).or_default(),
            &mut total,
        ] {
            c.invoked += 1;
            match &op.outcome {
                o if o.acknowledged() => c.acknowledged += 1,
                crate::history::Outcome::Refused { .. } => c.refused += 1,
                _ => c.unknown += 1,
            }
        }
    }
    (by, total)
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The report as text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let verdict = if self.passed() { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            s,
            "chaos {}: {verdict}  (seed {}, {} s of faults)",
            self.scenario,
            self.seed,
            self.duration_ms / 1000
        );
        let _ = writeln!(s, "replay:  {}", self.replay);
        let _ = writeln!(s, "cluster: {}", self.cluster);
        let _ = writeln!(s, "binary:  {}", self.binary);
        let _ = writeln!(
            s,
            "\nfaults injected: {} ({} planned, {} skipped)",
            self.faults_injected,
            self.planned.len(),
            self.faults_skipped
        );
        for (k, n) in &self.faults_by_kind {
            let _ = writeln!(s, "  {k:<24} {n}");
        }
        let _ = writeln!(
            s,
            "\noperations: {} invoked, {} acknowledged, {} refused, {} unknown outcome",
            self.ops_total.invoked,
            self.ops_total.acknowledged,
            self.ops_total.refused,
            self.ops_total.unknown
        );
        for (k, c) in &self.ops {
            let _ = writeln!(
                s,
                "  {k:<16} {:>6} invoked {:>6} acknowledged {:>5} refused {:>5} unknown",
                c.invoked, c.acknowledged, c.refused, c.unknown
            );
        }
        let show = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "\nbuilds: {}\nreleases: {}",
            show(&self.builds_by_state),
            show(&self.releases_by_state)
        );
        let _ = writeln!(s, "\ninvariants checked:");
        for v in &self.invariants {
            let mark = if v.passed { "pass" } else { "FAIL" };
            let _ = writeln!(s, "  [{mark}] {}: {}", v.name, v.detail);
        }
        match self.converged_after_ms {
            Some(ms) => {
                let _ = writeln!(
                    s,
                    "\nconverged {:.1} s after healing: {}/{} hosts on their region's goal",
                    ms as f64 / 1000.0,
                    self.hosts_converged,
                    self.hosts
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "\nNOT converged after healing: {}/{} hosts on their region's goal",
                    self.hosts_converged, self.hosts
                );
            }
        }
        let expected = self.exits.iter().filter(|e| e.expected).count();
        if !self.exits.is_empty() {
            let _ = writeln!(
                s,
                "processes that exited on their own: {} ({expected} expected: their disk was full)",
                self.exits.len()
            );
        }
        if self.violations.is_empty() {
            let _ = writeln!(s, "violations: none");
        } else {
            let _ = writeln!(
                s,
                "\nviolations: {} (replay with: {})",
                self.violations.len(),
                self.replay
            );
            for v in self.violations.iter().take(50) {
                let _ = writeln!(s, "  - {v}");
            }
            if self.violations.len() > 50 {
                let _ = writeln!(
                    s,
                    "  ... and {} more (see the JSON report)",
                    self.violations.len() - 50
                );
            }
        }
        let _ = writeln!(s, "run directory: {}", self.dir);
        s
    }
}
