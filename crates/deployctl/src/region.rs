//! `deployctl region status`, `hosts list`, `host get`: answered by a region's own group.

use deploy_client::ClusterStatusView;
use deploy_proto::v1 as pb;

use crate::cli::{Failure, Global, HostCommand, HostsCommand, RegionCommand};
use crate::output::{print, table};

pub async fn region(global: &Global, command: RegionCommand) -> Result<(), Failure> {
    let RegionCommand::Status = command;
    let region = global.need_region()?;
    let s = global
        .client()?
        .region_status(pb::RegionStatusRequest {
            region,
            stale: global.stale,
        })
        .await?;
    print(global.output, &s, |s| {
        println!(
            "region {}: {} hosts in {} racks; leader {}; answered by {}; applied global decision {}",
            s.region,
            s.hosts,
            s.racks,
            if s.leader.is_empty() { "unknown" } else { &s.leader },
            s.answered_by,
            s.applied_decision
        );
        if !s.relays.is_empty() {
            let relays: Vec<String> = s
                .relays
                .iter()
                .map(|r| format!("{} ({})", r.relay, r.rack))
                .collect();
            println!("relays: {}", relays.join(", "));
        }
        let counts = |v: &[pb::BuildHosts]| {
            v.iter()
                .map(|b| format!("{} x{}", b.build_id, b.hosts))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rows: Vec<Vec<String>> = s
            .services
            .iter()
            .map(|x| {
                vec![
                    x.service.clone(),
                    x.active_release.clone(),
                    counts(&x.goals),
                    if s.has_reports {
                        counts(&x.running)
                    } else {
                        "(leader only)".into()
                    },
                ]
            })
            .collect();
        if !rows.is_empty() {
            table(&["SERVICE", "ROLLING", "GOALS", "RUNNING"], &rows);
        }
        let rows: Vec<Vec<String>> = s
            .releases
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    r.service.clone(),
                    r.build_id.clone(),
                    r.state().name().to_string(),
                    format!("{}/{}", r.wave, r.waves),
                    format!("{}/{}", r.hosts_updated, r.hosts_total),
                    r.hosts_failed.to_string(),
                    r.reason.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            println!();
            table(
                &[
                    "RELEASE", "SERVICE", "BUILD", "STATE", "WAVE", "UPDATED", "FAILED", "REASON",
                ],
                &rows,
            );
        }
    })
}

fn host_rows(hosts: &[pb::Host]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for h in hosts {
        let seen = if h.reported {
            format!("{} ms ago", h.last_report_ms_ago)
        } else {
            "-".into()
        };
        if h.services.is_empty() {
            rows.push(vec![
                h.host.clone(),
                h.rack.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                seen,
            ]);
            continue;
        }
        for s in &h.services {
            rows.push(vec![
                h.host.clone(),
                h.rack.clone(),
                s.service.clone(),
                s.goal_build_id.clone(),
                s.running_build_id.clone(),
                s.state().name().to_string(),
                seen.clone(),
            ]);
        }
    }
    rows
}

const HOST_HEADER: [&str; 7] = [
    "HOST", "RACK", "SERVICE", "GOAL", "RUNNING", "STATE", "REPORTED",
];

pub async fn hosts(global: &Global, command: HostsCommand) -> Result<(), Failure> {
    let HostsCommand::List {
        rack,
        limit,
        page_token,
    } = command;
    let region = global.need_region()?;
    let reply = global
        .client()?
        .list_hosts(pb::ListHostsRequest {
            region,
            rack: rack.unwrap_or_default(),
            stale: global.stale,
            page_size: limit,
            page_token: page_token.unwrap_or_default(),
        })
        .await?;
    print(global.output, &reply, |r| {
        table(&HOST_HEADER, &host_rows(&r.hosts));
        if !r.next_page_token.is_empty() {
            println!("more: --page-token {}", r.next_page_token);
        }
    })
}

pub async fn host(global: &Global, command: HostCommand) -> Result<(), Failure> {
    let HostCommand::Get { id } = command;
    let client = global.client()?;
    let regions = match &global.region {
        Some(r) => vec![r.clone()],
        None => {
            let status = ClusterStatusView(client.cluster_status().await?);
            status
                .0
                .groups
                .iter()
                .filter_map(|g| g.name.strip_prefix("region/").map(str::to_string))
                .collect()
        }
    };
    let mut last = None;
    for region in regions {
        match client
            .get_host(pb::GetHostRequest {
                region,
                host: id.clone(),
                stale: global.stale,
            })
            .await
        {
            Ok(h) => {
                return print(global.output, &h, |h| {
                    println!("host {} in rack {} of region {}", h.host, h.rack, h.region);
                    table(&HOST_HEADER, &host_rows(std::slice::from_ref(h)));
                })
            }
            Err(e) if e.code() == Some(deploy_client::Code::NotFound) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => Failure {
            message: format!("host {id} is in no region"),
            code: crate::exit::FAILURE,
        },
    })
}
