//! The cluster API's errors and their gRPC codes.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A bound was reached (a full queue): nothing was done; asking later may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ApiError::ResourceExhausted(_) => Code::ResourceExhausted,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

/// Longest error message a node sends: whatever a message echoes of its input, a caller
/// never gets back more than this (a clear error is short; the input is theirs already).
pub const MAX_ERROR_BYTES: usize = 1024;

/// `text` cut to at most [`MAX_ERROR_BYTES`] on a character boundary, marked when cut.
pub fn clip_message(text: String) -> String {
    if text.len() <= MAX_ERROR_BYTES {
        return text;
    }
    let mut end = MAX_ERROR_BYTES - 16;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (cut)", &text[..end])
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        Status::new(e.code(), clip_message(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_never_carries_more_than_its_bound() {
        let huge = ApiError::InvalidArgument(format!("addr {:?} is invalid", "é".repeat(600_000)));
        let s = Status::from(huge);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() <= MAX_ERROR_BYTES,
            "{} bytes",
            s.message().len()
        );
        assert!(s.message().starts_with("addr \"éé") && s.message().ends_with("(cut)"));
        let short = Status::from(ApiError::NotFound("build b-1 not found".into()));
        assert_eq!(short.message(), "build b-1 not found");
    }
}
