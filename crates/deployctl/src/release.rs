//! `deployctl release ...`

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use deploy_client::Client;
use deploy_proto::v1 as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::cli::{Decision, Failure, Global, ListArgs, Output, ReleaseCommand, StrategyArgs};
use crate::output::{ms, print, table};

fn strategy(a: StrategyArgs) -> pb::Strategy {
    pb::Strategy {
        canary: a.canary,
        waves: a.waves,
        max_unavailable_per_rack: a.max_unavailable,
        failure_threshold_pct: a.failure_threshold,
        min_healthy_ms: a.min_healthy_ms,
        progress_deadline_ms: a.deadline_secs.map(|s| s.saturating_mul(1000)),
        regions_at_once: a.regions_at_once,
        auto_rollback: a.no_auto_rollback.then_some(false),
        halt_all_on_failure: a.continue_on_failure.then_some(false),
    }
}

pub async fn run(global: &Global, command: ReleaseCommand) -> Result<(), Failure> {
    let client = global.client()?;
    let act = |d: Decision, action: &str| pb::ReleaseActionRequest {
        id: d.id,
        action: action.into(),
        actor: global.actor(),
        request_id: String::new(),
        reason: d.reason,
    };
    let request = match command {
        ReleaseCommand::Create {
            service,
            build,
            regions,
            strategy: s,
            wait,
        } => {
            let r = client
                .create_release(pb::CreateReleaseRequest {
                    service,
                    build_id: build,
                    regions,
                    strategy: Some(strategy(s)),
                    actor: global.actor(),
                    request_id: String::new(),
                })
                .await?;
            if !wait {
                return print(global.output, &r, |r| {
                    println!(
                        "release {} of {} build {} to {}: {}",
                        r.id,
                        r.service,
                        r.build_id,
                        regions_of(r),
                        r.state().name()
                    )
                });
            }
            return follow(global, &client, &r.id).await;
        }
        ReleaseCommand::Watch { id } => return follow(global, &client, &id).await,
        ReleaseCommand::Get { id } => {
            let r = client.get_release(&id, global.stale).await?;
            return print(global.output, &r, print_release);
        }
        ReleaseCommand::List(ListArgs {
            service,
            state,
            limit,
            page_token,
        }) => {
            let reply = client
                .list_releases(pb::ListReleasesRequest {
                    service: service.unwrap_or_default(),
                    state: crate::cli::state_arg(state, pb::ReleaseState::from_name)?,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    stale: global.stale,
                })
                .await?;
            return print(global.output, &reply, print_list);
        }
        ReleaseCommand::Pause(d) => act(d, "pause"),
        ReleaseCommand::Resume(d) => act(d, "resume"),
        ReleaseCommand::Abort(d) => act(d, "abort"),
        ReleaseCommand::Rollback(d) => act(d, "rollback"),
        ReleaseCommand::Promote(d) => act(d, "promote"),
    };
    let action = request.action.clone();
    let r = client.release_action(request).await?;
    print(global.output, &r, |r| {
        println!("{action}: release {} is {}", r.id, r.state().name())
    })
}

fn regions_of(r: &pb::Release) -> String {
    r.regions
        .iter()
        .map(|g| g.region.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn region_line(g: &pb::RegionRollout) -> String {
    let mut s = format!(
        "{:<11} wave {}/{}  {}/{} hosts updated",
        g.state().name(),
        g.wave,
        g.waves,
        g.hosts_updated,
        g.hosts_total
    );
    if g.hosts_failed > 0 {
        s.push_str(&format!(", {} failed", g.hosts_failed));
    }
    if !g.reason.is_empty() {
        s.push_str(&format!(" ({})", g.reason));
    }
    s
}

/// Follows a release until it ends: a bar per region for people on a terminal, a line per
/// change otherwise. Exit 0 only if it SUCCEEDED.
async fn follow(global: &Global, client: &Client, id: &str) -> Result<(), Failure> {
    let people = global.output == Output::Table;
    let bars = people && std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:<10} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut shown: BTreeMap<String, (ProgressBar, String)> = BTreeMap::new();
    let started = Instant::now();
    let mut misses = 0;
    let r = loop {
        let r = match client.get_release(id, false).await {
            Ok(r) => {
                misses = 0;
                r
            }
            // The global group may be electing a leader: keep waiting a while.
            Err(e) if e.is_unavailable() && misses < 60 => {
                misses += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for g in &r.regions {
            // A region not started yet gets its bar when it starts.
            if bars && g.hosts_total == 0 && g.state() == pb::ReleaseState::Pending {
                continue;
            }
            let line = region_line(g);
            let entry = shown.entry(g.region.clone()).or_insert_with(|| {
                let bar = if bars {
                    multi.add(ProgressBar::new(0).with_style(style.clone()))
                } else {
                    ProgressBar::hidden()
                };
                bar.set_prefix(g.region.clone());
                (bar, String::new())
            });
            entry.0.set_length(g.hosts_total);
            entry.0.set_position(g.hosts_updated);
            entry
                .0
                .set_message(format!("{} wave {}/{}", g.state().name(), g.wave, g.waves));
            if people && !bars && entry.1 != line {
                eprintln!("{} {:<10} {line}", r.id, g.region);
            }
            entry.1 = line;
        }
        if r.state().is_final() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // A bar stays where its region ended: full only for a region that succeeded.
    for (region, (bar, _)) in &shown {
        let ok = r
            .regions
            .iter()
            .any(|g| &g.region == region && g.state() == pb::ReleaseState::Succeeded);
        if ok {
            bar.finish();
        } else {
            bar.abandon();
        }
    }
    if people {
        eprintln!(
            "release {} {} after {:.1}s",
            r.id,
            r.state().name(),
            started.elapsed().as_secs_f64()
        );
    }
    print(global.output, &r, print_release)?;
    if r.state() == pb::ReleaseState::Succeeded {
        return Ok(());
    }
    let why = if r.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", r.reason)
    };
    Err(Failure {
        message: format!("release {} ended {}{why}", r.id, r.state().name()),
        code: crate::exit::ENDED_BADLY,
    })
}

fn print_release(r: &pb::Release) {
    let rows = [
        ("id", r.id.clone()),
        ("service", r.service.clone()),
        ("build", r.build_id.clone()),
        ("state", r.state().name().to_string()),
        ("reason", r.reason.clone()),
        (
            "hosts",
            format!(
                "{}/{} updated, {} failed",
                r.hosts_updated, r.hosts_total, r.hosts_failed
            ),
        ),
        ("by", r.created_by.clone()),
        ("created", ms(r.created_at_ms)),
        ("finished", ms(r.finished_at_ms)),
        ("superseded by", r.superseded_by.clone()),
    ];
    for (k, v) in rows {
        if !v.is_empty() && v != "-" {
            println!("{k:<9} {v}");
        }
    }
    for g in &r.regions {
        println!("  {:<10} {}", g.region, region_line(g));
    }
    for e in &r.history {
        println!("  {} {:<10} {}", ms(e.at_ms), e.by, e.what);
    }
}

fn print_list(reply: &pb::ListReleasesReply) {
    let rows: Vec<Vec<String>> = reply
        .releases
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.service.clone(),
                r.build_id.clone(),
                r.state().name().to_string(),
                format!("{}/{}", r.hosts_updated, r.hosts_total),
                regions_of(r),
                r.created_by.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "SERVICE", "BUILD", "STATE", "UPDATED", "REGIONS", "BY",
        ],
        &rows,
    );
    if !reply.next_page_token.is_empty() {
        println!("more: --page-token {}", reply.next_page_token);
    }
}
