//! The public token API, for admins: make, list and revoke the API's bearer tokens. Decided
//! by the global group (any node forwards to its leader), which copies every change to each
//! region so a region checks tokens while the global group is down.

use deploy_proto::v1 as pb;
use deploy_proto::v1::token_service_client::TokenServiceClient;
use deploy_proto::v1::token_service_server::TokenService;
use deploy_raft::GlobalTypes;
use deploy_state::tokens::{Role, Token, TokenCommand, TokenError};
use deploy_state::{GlobalCommand, Response as SmResponse};
use deploy_types::GroupName;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use crate::build_api::now_ms;
use crate::error::ApiError;
use crate::group::GroupHandle;
use crate::routing::{forwarded, hops, Route, Routing};

const GLOBAL: GroupName = GroupName::Global;
/// Random bytes in a token's text.
const SECRET_BYTES: usize = 32;

fn token_error(e: TokenError) -> ApiError {
    match e {
        TokenError::Invalid(_) => ApiError::InvalidArgument(e.to_string()),
        TokenError::Exists(_) => ApiError::AlreadyExists(e.to_string()),
        TokenError::NotFound(_) => ApiError::NotFound(e.to_string()),
    }
}

fn info_of(t: &Token) -> pb::TokenInfo {
    pb::TokenInfo {
        name: t.name.clone(),
        role: t.role.as_str().into(),
        services: t.services.clone(),
        created_by: t.created_by.clone(),
        created_at_ms: t.created_at_ms,
    }
}

/// A new token's text: `dpl_` and 64 hex characters of the OS's randomness.
fn secret() -> Result<String, ApiError> {
    let mut b = [0u8; SECRET_BYTES];
    getrandom::fill(&mut b)
        .map_err(|e| ApiError::Internal(format!("no randomness to make a token from: {e}")))?;
    Ok(format!(
        "dpl_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// Proposes a token change, once for `request_id` (if any); `Ok(None)`: the id had already
/// applied it.
async fn propose(
    h: &GroupHandle<GlobalTypes>,
    cmd: TokenCommand,
    request_id: &str,
) -> Result<Option<String>, ApiError> {
    let cmd = crate::request_id::once::<deploy_state::GlobalState>(
        request_id,
        GlobalCommand::Token(cmd),
    )?;
    match h.propose(cmd).await?.1 {
        SmResponse::Token { name } => Ok(Some(name)),
        SmResponse::Repeated { .. } => Ok(None),
        SmResponse::TokenRejected(e) => Err(token_error(e)),
        other => Err(ApiError::Internal(format!("unexpected response {other:?}"))),
    }
}

pub struct TokenApi {
    routing: Routing,
}

impl TokenApi {
    pub fn new(routing: Routing) -> Self {
        Self { routing }
    }

    fn client(&self, addr: &str) -> Result<TokenServiceClient<Channel>, ApiError> {
        Ok(TokenServiceClient::new(self.routing.channel(addr)?))
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    #[instrument(skip_all, fields(token = %request.get_ref().name, role = %request.get_ref().role))]
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let role = Role::parse(&req.role).ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "role {:?}: expected admin, releaser or reader",
                req.role.chars().take(40).collect::<String>()
            ))
        })?;
        // Refused here, before it is forwarded or proposed: what the log never holds cannot
        // slow it.
        deploy_state::tokens::check_request(&req.name, role, &req.services)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .create_token(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        // Made by the leader that proposes it, so a forwarded call's secret never travels
        // twice and the hash in the log is of a text only this reply carries.
        let secret = secret()?;
        let token = Token {
            name: req.name,
            sha256: deploy_types::security::token_sha256(&secret),
            role,
            services: req.services,
            created_by: crate::auth::decided_by(""),
            created_at_ms: now_ms(),
        };
        let info = info_of(&token);
        let made = propose(
            h,
            TokenCommand::Create {
                token,
                regions: self.routing.regions(),
            },
            &req.request_id,
        )
        .await?;
        if made.is_none() {
            // Its secret went out in the answer that was lost, and no node keeps it.
            return Err(ApiError::AlreadyExists(format!(
                "request {} already created token {}; its secret is shown only once, in the \
                 answer that was lost: revoke the token and create another",
                req.request_id, info.name
            ))
            .into());
        }
        info!(token = %info.name, role = %info.role, "token created");
        Ok(Response::new(pb::CreateTokenReply {
            token: Some(info),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let h = match self
            .routing
            .reader::<GlobalTypes>(&GLOBAL, false, hops)
            .await?
        {
            Route::Local(h) => h,
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .list_tokens(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
        };
        let tokens = h
            .state
            .read(|d| d.state.tokens.by_name.values().map(info_of).collect());
        Ok(Response::new(pb::ListTokensReply { tokens }))
    }

    #[instrument(skip_all, fields(token = %request.get_ref().name))]
    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let hops = hops(&request);
        let req = request.into_inner();
        let h = match self.routing.route::<GlobalTypes>(&GLOBAL, hops).await? {
            Route::Remote(addr) => {
                return self
                    .client(&addr)?
                    .revoke_token(forwarded(req, hops))
                    .await
                    .map_err(|s| crate::routing::relay_error(&addr, s))
            }
            Route::Local(h) => h,
        };
        let before = h
            .state
            .read(|d| d.state.tokens.by_name.get(&req.name).map(info_of));
        propose(
            h,
            TokenCommand::Revoke {
                name: req.name.clone(),
                by: crate::auth::decided_by(""),
                now_ms: now_ms(),
                regions: self.routing.regions(),
            },
            &req.request_id,
        )
        .await?;
        info!(token = %req.name, "token revoked");
        Ok(Response::new(before.unwrap_or(pb::TokenInfo {
            name: req.name,
            ..Default::default()
        })))
    }
}
