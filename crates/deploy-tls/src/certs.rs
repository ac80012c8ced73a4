//! The cluster CA and the certificates of its processes (rcgen).
//!
//! `ca.pem`/`ca.key` are the CA; `<id>.pem`/`<id>.key` a process's certificate, whose common
//! name is its id (the node, worker, relay or host name of the cluster config) and whose
//! subject alternative names are the hosts it is reached at. Every certificate is good for
//! both ends of a connection: each process serves and calls. Keys are written mode 0600 and
//! never overwritten.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::TlsError;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
/// How long issued certificates last.
const VALID_DAYS: i64 = 3 * 365;

/// The files of process `id` under `dir`.
pub fn cert_path(dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")))
}

fn io(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `data` to a new file (never replacing one), mode 0600 for keys.
fn write_new(path: &Path, data: &[u8], secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| io(path, e))?;
    f.write_all(data).map_err(|e| io(path, e))
}

fn validity(params: &mut CertificateParams) {
    let now = time_now();
    params.not_before = now - rcgen_days(1);
    params.not_after = now + rcgen_days(VALID_DAYS);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(d: i64) -> time::Duration {
    time::Duration::days(d)
}

/// Makes a new CA in `dir` (`ca.pem`, `ca.key`); refuses to replace one.
pub fn init_ca(dir: &Path, cluster: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if cert_path.exists() || key_path.exists() {
        return Err(TlsError::Exists(cert_path.display().to_string()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster} cluster CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok((cert_path, key_path))
}

/// Issues process `id` a certificate signed by the CA in `dir`, valid for `hosts` (IP
/// addresses or DNS names) and `localhost`; writes `<id>.pem` and `<id>.key` there.
pub fn issue(dir: &Path, id: &str, hosts: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    if id.is_empty() || id.len() > 63 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(TlsError::Invalid(format!(
            "id {:?}: expected 1-63 letters, digits or '-'",
            id.chars().take(64).collect::<String>()
        )));
    }
    let (cert_path, key_path) = cert_path(dir, id);
    if cert_path.exists() || key_path.exists() {
        return Err(TlsError::Exists(cert_path.display().to_string()));
    }
    let ca_pem =
        std::fs::read_to_string(dir.join(CA_CERT)).map_err(|e| io(&dir.join(CA_CERT), e))?;
    let ca_key_pem =
        std::fs::read_to_string(dir.join(CA_KEY)).map_err(|e| io(&dir.join(CA_KEY), e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, id);
    let mut sans = vec![SanType::DnsName("localhost".try_into()?)];
    for h in hosts {
        let san = match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.as_str().try_into()?),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok((cert_path, key_path))
}

/// The host of `host:port` (an IP address, or a name), for a certificate's names.
pub fn host_of(addr: &str) -> Option<String> {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_string());
    }
    addr.rsplit_once(':').map(|(h, _)| h.to_string())
}
