//! The binary, versioned encoding of everything that crosses a disk or a wire: log entries,
//! Raft RPC payloads, stored metadata and snapshots.
//!
//! Records are postcard (compact, varint-encoded, no field names) behind one format-version
//! byte, so a node meeting a record written by a newer format refuses it by name instead of
//! misreading it. Snapshots are a stream: a magic, the version, then the postcard encoding of
//! the state, written to and read from a file without ever holding the whole in one buffer.
//!
//! Every decode of bytes from a peer or from disk goes through here, so a hostile or corrupt
//! input is an error with context, never a panic.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest single Raft message or stored record accepted. Entries are small decisions; the
/// bound is far above any legitimate one and keeps a hostile peer from exhausting memory.
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// The record format this build writes, and the only one it reads (2: each kind of group
/// logs its own command enum; 3: a collect carries the decisions every region applied, and
/// request ids their time; 4: a lease has a version, and an expiry names the versions it ends).
pub const FORMAT_VERSION: u8 = 4;

/// What a snapshot stream starts with, before its version byte.
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"DSNP";

/// Largest snapshot accepted, from this node's own disk or from its group's leader. A
/// snapshot is the whole state, so the record bound would cap the state itself.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// Scratch space a snapshot decode may use for one value (a string, say): no single field of
/// the state comes near it, and a hostile length prefix fails against it instead of
/// allocating.
const SNAPSHOT_SCRATCH_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{what}: {len} bytes is over the {max}-byte limit")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what}: empty")]
    Empty { what: &'static str },
    #[error(
        "{what}: format version {found} is not one this build knows (it reads version \
         {FORMAT_VERSION}); the data is left as it is: run a build that knows it"
    )]
    UnknownVersion { what: &'static str, found: u8 },
    #[error("{what}: does not start with the snapshot magic")]
    NotASnapshot { what: &'static str },
    #[error("{what}: {extra} bytes after the end of the record")]
    Trailing { what: &'static str, extra: usize },
    #[error("{what}: {source}")]
    Postcard {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The bytes `value` takes encoded (without the version byte), counted without encoding it
/// into a buffer.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

/// One record: the version byte, then postcard.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_extend(value, vec![FORMAT_VERSION])
        .map_err(|source| CodecError::Postcard { what, source })
}

/// Decodes one record of at most [`MAX_RECORD_BYTES`], refusing any other format version and
/// any bytes left over.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(CodecError::TooLarge {
            what,
            len: bytes.len() as u64,
            max: MAX_RECORD_BYTES as u64,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty { what })?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion {
            what,
            found: version,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|source| CodecError::Postcard { what, source })?;
    if !rest.is_empty() {
        return Err(CodecError::Trailing {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}

/// Writes `value` as a snapshot stream: magic, version, postcard. Streams into `out`.
pub fn write_snapshot<T: Serialize, W: Write>(
    what: &'static str,
    value: &T,
    mut out: W,
) -> Result<W, CodecError> {
    out.write_all(SNAPSHOT_MAGIC)
        .and_then(|()| out.write_all(&[FORMAT_VERSION]))
        .map_err(|source| CodecError::Io { what, source })?;
    postcard::to_io(value, out).map_err(|source| CodecError::Postcard { what, source })
}

/// Checks a snapshot stream's header: the magic, then a version this build knows.
fn read_snapshot_header<R: Read>(what: &'static str, input: &mut R) -> Result<(), CodecError> {
    let mut head = [0u8; 5];
    input
        .read_exact(&mut head)
        .map_err(|source| CodecError::Io { what, source })?;
    if &head[..4] != SNAPSHOT_MAGIC {
        return Err(CodecError::NotASnapshot { what });
    }
    if head[4] != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion {
            what,
            found: head[4],
        });
    }
    Ok(())
}

/// Reads a snapshot stream of `len` bytes (at most [`MAX_SNAPSHOT_BYTES`]), holding one value
/// at a time, never the whole stream.
pub fn read_snapshot<T: DeserializeOwned, R: Read>(
    what: &'static str,
    mut input: R,
    len: u64,
) -> Result<T, CodecError> {
    if len > MAX_SNAPSHOT_BYTES {
        return Err(CodecError::TooLarge {
            what,
            len,
            max: MAX_SNAPSHOT_BYTES,
        });
    }
    read_snapshot_header(what, &mut input)?;
    let mut scratch = vec![0u8; SNAPSHOT_SCRATCH_BYTES];
    let reader = std::io::BufReader::with_capacity(256 * 1024, input.take(len));
    let (value, _) = postcard::from_io((reader, &mut scratch[..]))
        .map_err(|source| CodecError::Postcard { what, source })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_refuses_other_versions() {
        let bytes = encode("test", &("web", 7u64)).expect("encodes");
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, u64) = decode("test", &bytes).expect("decodes");
        assert_eq!(back, ("web".to_string(), 7));

        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        let err = decode::<(String, u64)>("stored log entry", &newer).unwrap_err();
        assert!(
            matches!(err, CodecError::UnknownVersion { found, .. } if found == FORMAT_VERSION + 1)
        );
        let named = format!("format version {}", FORMAT_VERSION + 1);
        assert!(err.to_string().contains(&named), "{err}");

        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(
            decode::<(String, u64)>("test", &longer),
            Err(CodecError::Trailing { extra: 1, .. })
        ));
        assert!(matches!(
            decode::<u64>("test", &[]),
            Err(CodecError::Empty { .. })
        ));
    }

    #[test]
    fn a_snapshot_streams_and_refuses_other_versions_and_oversized_values() {
        let value: Vec<String> = (0..10_000).map(|i| format!("build-{i}")).collect();
        let bytes = write_snapshot("test", &value, Vec::new()).expect("writes");
        let back: Vec<String> =
            read_snapshot("test", &bytes[..], bytes.len() as u64).expect("reads");
        assert_eq!(back, value);

        let mut newer = bytes.clone();
        newer[4] = 9;
        assert!(matches!(
            read_snapshot::<Vec<String>, _>("test", &newer[..], newer.len() as u64),
            Err(CodecError::UnknownVersion { found: 9, .. })
        ));
        assert!(matches!(
            read_snapshot::<Vec<String>, _>("test", &b"JSON{"[..], 5),
            Err(CodecError::NotASnapshot { .. })
        ));
        // A string claiming more than the scratch space fails instead of allocating it.
        let mut hostile = SNAPSHOT_MAGIC.to_vec();
        hostile.push(FORMAT_VERSION);
        hostile.push(1); // one element
        hostile.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // a 4 GiB string
        assert!(
            read_snapshot::<Vec<String>, _>("test", &hostile[..], hostile.len() as u64).is_err()
        );
    }
}
