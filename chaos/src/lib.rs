//! The chaos harness: a whole cluster of real `deployd` processes on loopback, a workload of
//! builds, releases and operator actions, faults injected on a seeded schedule (SIGKILL,
//! SIGSTOP, partitions through a fault-injecting proxy in front of every node, slow links, a
//! relay serving corrupt bytes, a full disk), then healing and a check of the failure
//! model's invariants (`../shared/design.md`, section 10), with a report.
//!
//! - [`scenario`]: the scenario files under `chaos/scenarios/`;
//! - [`fault`]: fault kinds and the pure, seeded schedule;
//! - [`layout`], [`cluster`], [`net`]: the processes, their addresses, the proxies;
//! - [`workload`], [`history`]: the clients and the record of every call;
//! - [`inject`]: carrying out the schedule;
//! - [`check`], [`hosts`], [`logs`], [`lin`]: the invariants;
//! - [`run`], [`report`]: one run, start to end.
//!
//! It drives the system only from outside (processes, gRPC, HTTP, and each stopped node's
//! log through `deployd inspect-log`); it must not link the coordinator, Raft or the state.

pub mod check;
pub mod cluster;
pub mod control;
pub mod fault;
pub mod history;
pub mod hosts;
pub mod inject;
pub mod layout;
pub mod lin;
pub mod logs;
pub mod net;
pub mod report;
pub mod run;
pub mod scenario;
pub mod workload;

/// Parses a duration such as `120s`, `2m`, `1500ms` or `90` (seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?}: expected a duration such as 120s, 2m, 1500ms or 90");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(bad()),
    };
    if ms == 0 || ms > 86_400_000 {
        return Err(format!("{s:?}: must be above 0 and at most a day"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(super::parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(
            super::parse_duration("1500ms"),
            Ok(Duration::from_millis(1500))
        );
        for bad in ["", "s", "0", "12x", "-1s", "99999999999h"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
