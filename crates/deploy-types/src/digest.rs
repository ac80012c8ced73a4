//! The one content digest: sha256, written `sha256:<64 lowercase hex>`.
//!
//! Artifacts, their chunks and their manifests are named by it everywhere (the store, the
//! relays' caches, the HTTP routes, the build records). It is parsed once where a name comes
//! in, from a request, a file name or a manifest, and is a `[u8; 32]` from then on. Upper-case
//! hex is refused, not folded: two spellings of one digest would name two files in a store.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::validate::shown;

/// The prefix every written digest carries.
pub const PREFIX: &str = "sha256:";

/// A sha256 digest (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("expected a digest, sha256:<64 lowercase hex>; got {0:?}")]
    Malformed(String),
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(sha2::Sha256::digest(data).into())
    }

    /// A hasher's result.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// `sha256:<64 lowercase hex>`, exactly.
    pub fn parse(raw: &str) -> Result<Self, DigestError> {
        raw.strip_prefix(PREFIX)
            .and_then(decode)
            .map(Self)
            .ok_or_else(|| DigestError::Malformed(shown(raw)))
    }

    /// 64 lowercase hex digits alone, as files and chunk routes name it.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        decode(hex)
            .map(Self)
            .ok_or_else(|| DigestError::Malformed(shown(hex)))
    }

    /// Either written form: what a URL path may carry.
    pub fn parse_either(raw: &str) -> Result<Self, DigestError> {
        match raw.strip_prefix(PREFIX) {
            Some(_) => Self::parse(raw),
            None => Self::from_hex(raw),
        }
    }

    /// The 64 lowercase hex digits, without the prefix.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a digest, sha256:<64 lowercase hex>")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Digest, E> {
                Digest::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Serde for an `Option<Digest>` written as a string that is empty for `None`: the form of a
/// goal that names no build, in the same bytes as a digest's.
pub mod or_empty {
    use super::Digest;

    pub fn serialize<S: serde::Serializer>(d: &Option<Digest>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(d),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Digest>, D::Error> {
        let text: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        match &*text {
            "" => Ok(None),
            t => Digest::parse(t).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_parses_and_round_trips() {
        let d = Digest::of(b"hello");
        let text = d.to_string();
        assert_eq!(
            text,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(&text), Ok(d));
        assert_eq!(Digest::from_hex(&d.hex()), Ok(d));
        assert_eq!(Digest::parse_either(&d.hex()), Ok(d));
        assert_eq!(Digest::parse_either(&text), Ok(d));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn every_other_spelling_is_refused_with_a_short_error() {
        let d = Digest::of(b"hello").hex();
        for bad in [
            d.to_uppercase(),
            format!("sha256:{}", d.to_uppercase()),
            format!("SHA256:{d}"),
            format!("sha256:{}", &d[..63]),
            format!("sha256:{d}0"),
            format!("sha256: {}", &d[1..]),
            format!("sha512:{d}"),
            format!("sha256:{}g", &d[..63]),
            String::new(),
            "é".repeat(40),
        ] {
            assert!(Digest::parse_either(&bad).is_err(), "{bad:?} was taken");
        }
        assert!(
            Digest::parse(&d).is_err(),
            "the bare hex is not a written digest"
        );
        assert!(Digest::from_hex(&format!("sha256:{d}")).is_err());
        let long = "x".repeat(1_000_000);
        let e = Digest::parse(&long).unwrap_err().to_string();
        assert!(e.len() < 200, "{e}");
        assert!(serde_json::from_str::<Digest>(&format!("\"{}\"", d.to_uppercase())).is_err());
    }

    #[test]
    fn an_absent_digest_is_written_empty() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Goal {
            #[serde(with = "or_empty")]
            d: Option<Digest>,
        }
        for g in [
            Goal { d: None },
            Goal {
                d: Some(Digest::of(b"x")),
            },
        ] {
            let json = serde_json::to_string(&g).unwrap();
            assert_eq!(serde_json::from_str::<Goal>(&json).unwrap(), g);
        }
        assert_eq!(
            serde_json::to_string(&Goal { d: None }).unwrap(),
            r#"{"d":""}"#
        );
        assert!(serde_json::from_str::<Goal>(r#"{"d":"sha256:x"}"#).is_err());
    }
}
