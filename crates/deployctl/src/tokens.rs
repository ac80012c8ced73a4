//! `deployctl tokens ...`

use deploy_proto::v1 as pb;

use crate::cli::{Failure, Global, TokensCommand};
use crate::output::{ms, print, table};

pub async fn run(global: &Global, command: TokensCommand) -> Result<(), Failure> {
    let client = global.client()?;
    match command {
        TokensCommand::Create {
            name,
            role,
            services,
        } => {
            let reply = client
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    services,
                    // The client names the call.
                    request_id: String::new(),
                })
                .await?;
            print(global.output, &reply, |r| {
                let name = r.token.as_ref().map(|t| t.name.as_str()).unwrap_or("");
                // The text on stdout alone, so `> ci.token` keeps just it; the rest to stderr.
                println!("{}", r.secret);
                eprintln!("token {name} made; this is the only time its text is shown");
            })
        }
        TokensCommand::List => {
            let reply = client.list_tokens(pb::ListTokensRequest {}).await?;
            print(global.output, &reply, |r| {
                let rows: Vec<Vec<String>> = r
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.role.clone(),
                            if t.services.is_empty() {
                                "*".into()
                            } else {
                                t.services.join(",")
                            },
                            t.created_by.clone(),
                            ms(t.created_at_ms),
                        ]
                    })
                    .collect();
                table(
                    &["NAME", "ROLE", "SERVICES", "CREATED_BY", "CREATED"],
                    &rows,
                );
            })
        }
        TokensCommand::Revoke { name } => {
            let reply = client
                .revoke_token(pb::RevokeTokenRequest {
                    name,
                    request_id: String::new(),
                })
                .await?;
            print(global.output, &reply, |t| {
                println!("token {} revoked", t.name)
            })
        }
    }
}
