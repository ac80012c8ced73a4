//! `deployctl cluster ...`

use crate::cli::{ClusterCommand, Failure, Global, MetaCommand};
use crate::output::{print, table};
use deploy_proto::v1::{ClusterStatus, MembershipReply};

pub async fn run(global: &Global, command: ClusterCommand) -> Result<(), Failure> {
    let client = global.client()?;
    match command {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            print(global.output, &status, print_status)
        }
        ClusterCommand::AddNode { id, addr, group } => {
            let group = global.group(group.as_deref());
            let reply = client
                .with_timeout(std::time::Duration::from_secs(90))
                .add_node(&group, &id, &addr)
                .await?;
            print(global.output, &reply, print_membership)
        }
        ClusterCommand::RemoveNode { id, group } => {
            let group = global.group(group.as_deref());
            let reply = client.remove_node(&group, &id).await?;
            print(global.output, &reply, print_membership)
        }
        ClusterCommand::Meta(MetaCommand::Get { key, group }) => {
            let group = global.group(group.as_deref());
            let reply = client.get_meta(&group, &key, global.stale).await?;
            print(global.output, &reply, |r| {
                if let Some(v) = &r.value {
                    println!("{v}");
                }
            })?;
            // Like `git config --get`: an unset key is a failure scripts can test for.
            match reply.value {
                Some(_) => Ok(()),
                None => Err(Failure {
                    message: format!("{key} is not set in {group}"),
                    code: crate::exit::FAILURE,
                }),
            }
        }
        ClusterCommand::Meta(MetaCommand::Set { key, value, group }) => {
            let group = global.group(group.as_deref());
            let reply = client.set_meta(&group, &key, Some(&value)).await?;
            print(global.output, &reply, |r| {
                println!("set {key} in {group} at log index {}", r.log_index)
            })
        }
        ClusterCommand::Meta(MetaCommand::Delete { key, group }) => {
            let group = global.group(group.as_deref());
            let reply = client.set_meta(&group, &key, None).await?;
            print(global.output, &reply, |r| {
                println!("deleted {key} in {group} at log index {}", r.log_index)
            })
        }
    }
}

fn print_status(status: &ClusterStatus) {
    let mut rows = Vec::new();
    for g in &status.groups {
        for m in &g.members {
            let leader = if g.leader.is_empty() {
                "-"
            } else {
                g.leader.as_str()
            };
            let role = if m.error.is_empty() {
                m.role().name().to_string()
            } else {
                format!("{} ({})", m.role().name(), m.error)
            };
            rows.push(vec![
                g.name.clone(),
                leader.to_string(),
                g.term.to_string(),
                m.id.clone(),
                m.addr.clone(),
                role,
                m.last_applied.to_string(),
            ]);
        }
    }
    table(
        &[
            "GROUP",
            "LEADER",
            "TERM",
            "MEMBER",
            "ADDR",
            "ROLE",
            "LAST_APPLIED",
        ],
        &rows,
    );
}

fn print_membership(reply: &MembershipReply) {
    println!(
        "{} membership at log index {}:",
        reply.group, reply.log_index
    );
    let rows: Vec<Vec<String>> = reply
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.addr.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
            ]
        })
        .collect();
    table(&["MEMBER", "ADDR", "KIND"], &rows);
}
