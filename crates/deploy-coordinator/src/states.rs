//! The replicated states as the API's enums, and back: one exhaustive match each way, so a
//! state added on either side does not compile until both agree.

use deploy_proto::v1 as pb;
use deploy_state::{BuildState, ReleaseState};

use crate::error::ApiError;

/// A list request's build state filter: `None` for UNSPECIFIED (any state); a number this
/// node does not know is refused, not taken for "any".
pub fn build_filter(n: i32) -> Result<Option<BuildState>, ApiError> {
    pb::BuildState::try_from(n)
        .map(from_build_state)
        .map_err(|_| ApiError::InvalidArgument(format!("state {n} is not a build state")))
}

/// A list request's release state filter, as [`build_filter`].
pub fn release_filter(n: i32) -> Result<Option<ReleaseState>, ApiError> {
    pb::ReleaseState::try_from(n)
        .map(from_release_state)
        .map_err(|_| ApiError::InvalidArgument(format!("state {n} is not a release state")))
}

pub fn build_state(s: BuildState) -> pb::BuildState {
    match s {
        BuildState::Queued => pb::BuildState::Queued,
        BuildState::Running => pb::BuildState::Running,
        BuildState::Replicating => pb::BuildState::Replicating,
        BuildState::Succeeded => pb::BuildState::Succeeded,
        BuildState::Failed => pb::BuildState::Failed,
        BuildState::Cancelled => pb::BuildState::Cancelled,
    }
}

/// The build state a request names; `None` for UNSPECIFIED (or a number this node does not
/// know, which decodes as UNSPECIFIED).
pub fn from_build_state(s: pb::BuildState) -> Option<BuildState> {
    Some(match s {
        pb::BuildState::Unspecified => return None,
        pb::BuildState::Queued => BuildState::Queued,
        pb::BuildState::Running => BuildState::Running,
        pb::BuildState::Replicating => BuildState::Replicating,
        pb::BuildState::Succeeded => BuildState::Succeeded,
        pb::BuildState::Failed => BuildState::Failed,
        pb::BuildState::Cancelled => BuildState::Cancelled,
    })
}

pub fn release_state(s: ReleaseState) -> pb::ReleaseState {
    match s {
        ReleaseState::Pending => pb::ReleaseState::Pending,
        ReleaseState::RollingOut => pb::ReleaseState::RollingOut,
        ReleaseState::Paused => pb::ReleaseState::Paused,
        ReleaseState::Succeeded => pb::ReleaseState::Succeeded,
        ReleaseState::Failed => pb::ReleaseState::Failed,
        ReleaseState::Aborted => pb::ReleaseState::Aborted,
        ReleaseState::RolledBack => pb::ReleaseState::RolledBack,
    }
}

/// The release state a request names; `None` for UNSPECIFIED.
pub fn from_release_state(s: pb::ReleaseState) -> Option<ReleaseState> {
    Some(match s {
        pb::ReleaseState::Unspecified => return None,
        pb::ReleaseState::Pending => ReleaseState::Pending,
        pb::ReleaseState::RollingOut => ReleaseState::RollingOut,
        pb::ReleaseState::Paused => ReleaseState::Paused,
        pb::ReleaseState::Succeeded => ReleaseState::Succeeded,
        pb::ReleaseState::Failed => ReleaseState::Failed,
        pb::ReleaseState::Aborted => ReleaseState::Aborted,
        pb::ReleaseState::RolledBack => ReleaseState::RolledBack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_the_same_name_both_sides_and_maps_back() {
        use BuildState as B;
        for s in [
            B::Queued,
            B::Running,
            B::Replicating,
            B::Succeeded,
            B::Failed,
            B::Cancelled,
        ] {
            assert_eq!(build_state(s).name(), s.as_str());
            assert_eq!(from_build_state(build_state(s)), Some(s));
        }
        use ReleaseState as R;
        for s in [
            R::Pending,
            R::RollingOut,
            R::Paused,
            R::Succeeded,
            R::Failed,
            R::Aborted,
            R::RolledBack,
        ] {
            assert_eq!(release_state(s).name(), s.as_str());
            assert_eq!(from_release_state(release_state(s)), Some(s));
        }
        assert_eq!(from_build_state(pb::BuildState::Unspecified), None);
    }
}
