//! Artifacts: what a build produces and how it is stored.
//!
//! - [`recipe`]: `deploy.toml`, the repository's own build and run recipe.
//! - [`pack`]: the declared outputs as a deterministic tar stream, cut into fixed-size chunks
//!   named by their SHA-256, uploaded as they are cut: memory stays at a few chunks whatever
//!   the artifact's size.
//! - [`manifest`]: the chunk list, sizes and whole-artifact digest.
//! - [`signing`]: ed25519 signatures on manifests, checked against the trusted keys.
//! - [`store`]: a region's store through `object_store`: chunks and manifests written once,
//!   atomically, verified against their digest on every read; build log segments.
//! - [`gc`]: retention: which artifacts are kept and what garbage collection may delete.
//! - [`copy`]: replication of an artifact from one store to another, chunk by chunk, skipping
//!   chunks the destination already holds intact.
//! - [`serve`]: the chunk and manifest HTTP answers every artifact server gives.
//!
//! This crate knows nothing of Raft, gRPC or the cluster's processes.

pub mod copy;
pub mod gc;
pub mod manifest;
pub mod pack;
pub mod recipe;
pub mod serve;
pub mod signing;
pub mod store;

pub use manifest::{ChunkRef, Manifest};
pub use recipe::Recipe;
pub use signing::{KeyPair, SignError, TrustedKeys};
pub use store::{Store, StoreError};

pub use deploy_types::Digest;

/// The digest of some bytes.
pub fn digest_of(data: &[u8]) -> Digest {
    Digest::of(data)
}

/// A single `bytes=` range of a body of `len` bytes, as a half-open interval.
pub fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", "") => return None,
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            if n == 0 {
                return None;
            }
            (len.saturating_sub(n), len)
        }
        (s, "") => (s.parse().ok()?, len),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.checked_add(1)?.min(len),
        ),
    };
    (start < end && start < len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=-0",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=x-1",
            "bytes=-",
        ] {
            assert_eq!(parse_range(bad, 100), None, "{bad}");
        }
    }
}
