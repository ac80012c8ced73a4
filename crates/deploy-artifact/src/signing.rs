//! Manifest signatures: the build system signs every manifest with an ed25519 key, and every
//! reader checks it against the public keys the cluster config trusts.
//!
//! Key files hold the 32-byte key as 64 hex characters. The signature covers the manifest's
//! JSON with the `signature` field absent (struct field order makes it deterministic).

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::manifest::{Manifest, ManifestSignature};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read key file {path}: {why}")]
    KeyFile { path: String, why: String },
    #[error("key {0:?} is not 64 hex characters")]
    BadKey(String),
    #[error("cannot make a key: {0}")]
    Random(String),
    #[error("manifest {0} is not signed")]
    Unsigned(crate::Digest),
    #[error("manifest {digest} is signed by key {key}, which this cluster does not trust")]
    UnknownKey { digest: crate::Digest, key: String },
    #[error("manifest {0} has an invalid signature")]
    BadSignature(crate::Digest),
}

fn key_bytes(hex_text: &str) -> Result<[u8; 32], SignError> {
    let t = hex_text.trim();
    let bad = || SignError::BadKey(t.chars().take(80).collect());
    let v = hex::decode(t).map_err(|_| bad())?;
    v.try_into().map_err(|_| bad())
}

/// The build system's private key.
pub struct KeyPair {
    key: SigningKey,
}

impl KeyPair {
    pub fn generate() -> Result<Self, SignError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SignError::Random(e.to_string()))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The key made from `seed`: for tests and fuzzing, which need the same key every run.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    pub fn load(path: &Path) -> Result<Self, SignError> {
        let text = std::fs::read_to_string(path).map_err(|e| SignError::KeyFile {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(Self {
            key: SigningKey::from_bytes(&key_bytes(&text)?),
        })
    }

    /// Writes the private key (mode 0600) to `path`, creating parent directories.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path)?;
        std::io::Write::write_all(
            &mut f,
            format!("{}\n", hex::encode(self.key.to_bytes())).as_bytes(),
        )
    }

    /// The public key, as the cluster config lists it.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    /// Signs `m` in place.
    pub fn sign(&self, m: &mut Manifest) {
        m.signature = None;
        let sig = self.key.sign(&m.signing_bytes());
        m.signature = Some(ManifestSignature {
            key: self.public_hex(),
            sig: hex::encode(sig.to_bytes()),
        });
    }
}

/// The public keys whose signatures a cluster accepts.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys(Vec<VerifyingKey>);

impl TrustedKeys {
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> Result<Self, SignError> {
        keys.iter()
            .map(|k| {
                let bytes = key_bytes(k.as_ref())?;
                VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| SignError::BadKey(k.as_ref().to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Checks that `m` is signed by a trusted key and unchanged since.
    pub fn verify(&self, m: &Manifest) -> Result<(), SignError> {
        let digest = m.artifact_digest;
        let sig = m.signature.as_ref().ok_or(SignError::Unsigned(digest))?;
        // One spelling per signature, as signers write it: lowercase hex. Another spelling
        // of the same bytes would make two different manifests carry one valid signature.
        let lower_hex = |t: &str| t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !lower_hex(&sig.key) || !lower_hex(&sig.sig) {
            return Err(SignError::BadSignature(digest));
        }
        let key_bytes = key_bytes(&sig.key).map_err(|_| SignError::BadSignature(digest))?;
        let key = self
            .0
            .iter()
            .find(|k| k.to_bytes() == key_bytes)
            .ok_or_else(|| SignError::UnknownKey {
                digest,
                key: sig.key.chars().take(64).collect(),
            })?;
        let raw: [u8; 64] = hex::decode(&sig.sig)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(SignError::BadSignature(digest))?;
        let signature = ed25519_dalek::Signature::from_bytes(&raw);
        let mut unsigned = m.clone();
        unsigned.signature = None;
        key.verify_strict(&unsigned.signing_bytes(), &signature)
            .map_err(|_| SignError::BadSignature(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ChunkRef;

    fn manifest() -> Manifest {
        Manifest {
            version: 1,
            artifact_digest: crate::digest_of(b"x"),
            size: 1,
            chunk_size: 4,
            chunks: vec![ChunkRef {
                digest: crate::digest_of(b"x"),
                size: 1,
            }],
            service: "svc".into(),
            build_id: "b-1".into(),
            commit: "c".into(),
            signature: None,
        }
    }

    #[test]
    fn signed_manifests_verify_and_tampering_is_caught() {
        let k = KeyPair::generate().unwrap();
        let trusted = TrustedKeys::parse(&[k.public_hex()]).unwrap();
        let mut m = manifest();
        assert!(matches!(trusted.verify(&m), Err(SignError::Unsigned(_))));
        k.sign(&mut m);
        trusted.verify(&m).unwrap();

        let mut tampered = m.clone();
        tampered.chunks[0].digest = crate::digest_of(b"y");
        assert!(matches!(
            trusted.verify(&tampered),
            Err(SignError::BadSignature(_))
        ));
        let mut tampered = m.clone();
        tampered.service = "other".into();
        assert!(matches!(
            trusted.verify(&tampered),
            Err(SignError::BadSignature(_))
        ));

        // The same signature spelled in uppercase: refused (found by the manifest fuzz target).
        let mut respelled = m.clone();
        let sig = respelled.signature.as_mut().unwrap();
        sig.sig = sig.sig.to_uppercase();
        assert!(matches!(
            trusted.verify(&respelled),
            Err(SignError::BadSignature(_))
        ));

        let stranger = KeyPair::generate().unwrap();
        let mut foreign = manifest();
        stranger.sign(&mut foreign);
        assert!(matches!(
            trusted.verify(&foreign),
            Err(SignError::UnknownKey { .. })
        ));
        // Claiming a trusted key with a stranger's signature fails too.
        foreign.signature.as_mut().unwrap().key = k.public_hex();
        assert!(matches!(
            trusted.verify(&foreign),
            Err(SignError::BadSignature(_))
        ));
    }

    #[test]
    fn key_files_round_trip_with_private_mode() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("keys/build.key");
        let k = KeyPair::generate().unwrap();
        k.save(&path).unwrap();
        assert_eq!(KeyPair::load(&path).unwrap().public_hex(), k.public_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        // Never overwrites an existing key.
        assert!(KeyPair::generate().unwrap().save(&path).is_err());
        assert!(TrustedKeys::parse(&["not hex"]).is_err());
    }
}
