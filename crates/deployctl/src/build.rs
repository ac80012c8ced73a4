//! `deployctl build ...`

use std::io::Write;
use std::time::{Duration, Instant};

use deploy_proto::v1::{self as pb, Build, ListBuildsReply, ListBuildsRequest};

use crate::cli::{BuildCommand, Failure, Global, ListArgs, Output};
use crate::output::{ms, print, table};

/// A local repository path given relative to the current directory becomes absolute.
fn absolute_repo(repo: &str) -> String {
    if repo.contains("://") || repo.starts_with('/') {
        return repo.to_string();
    }
    std::fs::canonicalize(repo)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| repo.to_string())
}

pub async fn run(global: &Global, command: BuildCommand) -> Result<(), Failure> {
    let client = global.client()?;
    match command {
        BuildCommand::Submit {
            service,
            repo,
            commit,
            wait,
        } => {
            let b = client
                .submit_build(&service, &absolute_repo(&repo), &commit)
                .await?;
            if !wait {
                return print(global.output, &b, |b| {
                    let verb = if b.created {
                        "queued"
                    } else {
                        "already known:"
                    };
                    println!("{verb} build {} ({})", b.id, b.state().name());
                });
            }
            if global.output == Output::Table {
                let verb = if b.created {
                    "queued"
                } else {
                    "following existing"
                };
                eprintln!(
                    "{verb} build {} of {} at {}",
                    b.id,
                    b.service,
                    &b.commit[..b.commit.len().min(12)]
                );
            }
            let b = wait_for(&client, &b.id, global.output == Output::Table).await?;
            print(global.output, &b, print_build)?;
            ended(&b)
        }
        BuildCommand::Get { id } => {
            let b = client.get_build(&id, global.stale).await?;
            print(global.output, &b, print_build)
        }
        BuildCommand::List(ListArgs {
            service,
            state,
            limit,
            page_token,
        }) => {
            let req = ListBuildsRequest {
                service: service.unwrap_or_default(),
                state: crate::cli::state_arg(state, pb::BuildState::from_name)?,
                page_size: limit,
                page_token: page_token.unwrap_or_default(),
                stale: global.stale,
            };
            let reply = client.list_builds(req).await?;
            print(global.output, &reply, print_list)
        }
        BuildCommand::Cancel { id } => {
            let b = client.cancel_build(&id).await?;
            print(global.output, &b, |b| {
                println!("build {} is {}", b.id, b.state().name())
            })
        }
        BuildCommand::Logs { id, follow } => {
            let mut stream = client.build_logs(&id, follow).await?;
            // A reader that went away (`| head -1`) ends a followed log at once, not at the
            // next line the build happens to write.
            let gone = crate::output::stdout_closed();
            tokio::pin!(gone);
            loop {
                let next = tokio::select! {
                    m = stream.message() => m,
                    _ = &mut gone => return Ok(()),
                };
                match next {
                    Ok(Some(chunk)) => {
                        let mut out = std::io::stdout().lock();
                        if let Err(e) = out.write_all(&chunk.data).and_then(|()| out.flush()) {
                            if e.kind() == std::io::ErrorKind::BrokenPipe {
                                return Ok(());
                            }
                            return Err(Failure {
                                message: format!("cannot write the log of {id}: {e}"),
                                code: crate::exit::FAILURE,
                            });
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(s) => {
                        return Err(Failure {
                            message: format!("log stream of {id} broke: {}", s.message()),
                            code: crate::exit::FAILURE,
                        })
                    }
                }
            }
        }
    }
}

/// Exit status for a build's end state.
fn ended(b: &Build) -> Result<(), Failure> {
    if b.state() == pb::BuildState::Succeeded {
        return Ok(());
    }
    let why = if b.error.is_empty() {
        String::new()
    } else {
        format!(": {}", b.error)
    };
    Err(Failure {
        message: format!("build {} ended {}{why}", b.id, b.state().name()),
        code: crate::exit::ENDED_BADLY,
    })
}

/// Polls the build until it ends, with a spinner for people.
async fn wait_for(client: &deploy_client::Client, id: &str, show: bool) -> Result<Build, Failure> {
    let bar = if show {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let mut misses = 0;
    loop {
        match client.get_build(id, false).await {
            Ok(b) => {
                misses = 0;
                if let Some(bar) = &bar {
                    let mut msg = format!("{} {}", b.id, b.state().name());
                    if b.attempts > 1 {
                        msg.push_str(&format!(" (attempt {})", b.attempts));
                    }
                    if !b.worker.is_empty() {
                        msg.push_str(&format!(" on {}", b.worker));
                    }
                    if b.state() == pb::BuildState::Replicating {
                        msg.push_str(&format!(" ({} regions done)", b.regions_done.len()));
                    }
                    bar.set_message(msg);
                }
                if b.state().is_final() {
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                    }
                    if show {
                        eprintln!(
                            "build {} {} after {:.1}s",
                            b.id,
                            b.state().name(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(b);
                }
            }
            // The cluster may be electing a leader: keep waiting a while.
            Err(e) if e.is_unavailable() && misses < 30 => misses += 1,
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

fn print_build(b: &Build) {
    let rows = [
        ("id", b.id.clone()),
        ("service", b.service.clone()),
        ("repo", b.repo.clone()),
        ("commit", b.commit.clone()),
        ("state", b.state().name().to_string()),
        ("attempts", b.attempts.to_string()),
        ("worker", b.worker.clone()),
        (
            "artifact",
            format!("{} ({} bytes)", b.artifact_digest, b.artifact_size),
        ),
        (
            "regions",
            b.replication
                .iter()
                .map(|r| {
                    format!(
                        "{} {} ({} bytes copied)",
                        r.region,
                        r.state().name(),
                        r.bytes_copied
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("error", b.error.clone()),
        ("created", ms(b.created_at_ms)),
        ("finished", ms(b.finished_at_ms)),
    ];
    for (k, v) in rows {
        if !v.is_empty() && v != " (0 bytes)" {
            println!("{k:<9} {v}");
        }
    }
    for t in &b.history {
        println!("  {} {:<11} {}", ms(t.at_ms), t.state().name(), t.note);
    }
}

fn print_list(reply: &ListBuildsReply) {
    let rows: Vec<Vec<String>> = reply
        .builds
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.service.clone(),
                b.state().name().to_string(),
                b.attempts.to_string(),
                b.commit.chars().take(12).collect(),
                b.worker.clone(),
                b.artifact_digest.chars().take(19).collect(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "SERVICE", "STATE", "ATTEMPTS", "COMMIT", "WORKER", "ARTIFACT",
        ],
        &rows,
    );
    if !reply.next_page_token.is_empty() {
        println!("more: --page-token {}", reply.next_page_token);
    }
}
