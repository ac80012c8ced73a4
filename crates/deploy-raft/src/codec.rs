//! JSON encoding of values that cross a disk or a wire, with size-bounded decoding.
//!
//! Every decode of bytes from a peer or from disk goes through here, so a hostile or corrupt
//! input is an error with context, never a panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest single Raft message or stored record accepted. Entries are small decisions; the
/// bound is far above any legitimate one and keeps a hostile peer from exhausting memory.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{what}: {len} bytes is over the {max}-byte limit")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    serde_json::to_vec(value).map_err(|source| CodecError::Json { what, source })
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    decode_within(what, bytes, MAX_RECORD_BYTES)
}

/// Largest snapshot accepted, from this node's own disk or from its group's leader. A
/// snapshot is the whole state, so the record bound would cap the state itself: a node whose
/// state outgrew it could not restore its own snapshot after a restart.
pub const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;

/// Decodes a snapshot (or the stored record holding one), bounded by [`MAX_SNAPSHOT_BYTES`].
pub fn decode_snapshot<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    decode_within(what, bytes, MAX_SNAPSHOT_BYTES)
}

fn decode_within<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| CodecError::Json { what, source })
}
