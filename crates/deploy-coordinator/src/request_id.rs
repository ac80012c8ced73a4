//! A write's request id, at the API edge: checked, then the write is proposed as a `Once` so
//! that a client sending it again (its answer was lost with a connection) applies it once
//! (see `deploy_state::once`).

use deploy_state::StateMachine;

use crate::build_api::now_ms;
use crate::ApiError;

/// `cmd` as it is proposed for `request_id`: unchanged when there is none, else wrapped so
/// it applies once. A malformed id is refused before anything is proposed.
pub fn once<S: StateMachine>(request_id: &str, cmd: S::Command) -> Result<S::Command, ApiError> {
    if request_id.is_empty() {
        return Ok(cmd);
    }
    deploy_state::once::check_id(request_id)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    Ok(S::once(request_id.to_string(), now_ms(), cmd))
}
