//! TLS material: operator-provided PEM files, or a development CA and server
//! certificate generated once in the data directory (rcgen) and reused.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// Failures preparing TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read" / "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Only one of certificate and key was given.
    #[error("--tls-cert and --tls-key must be given together")]
    Incomplete,
}

/// PEM certificate chain and private key for the listener.
pub struct TlsMaterial {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM. Never logged.
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
    /// The development CA, when generated here (`DATA_DIR/ca.pem`).
    pub ca_path: Option<PathBuf>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        action: "read",
        path: path.into(),
        source,
    })
}

/// Writes `contents` to `path` via a temporary file; `private` files get mode 0600.
pub(crate) fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        action: "write",
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Loads `cert`/`key` if given, else the development material in `data_dir`
/// (generating it on first use).
pub fn load_or_generate(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<TlsMaterial, TlsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(TlsMaterial {
            cert_pem: read(cert)?,
            key_pem: zeroize::Zeroizing::new(read(key)?),
            ca_path: None,
        }),
        (None, None) => development(data_dir),
        _ => Err(TlsError::Incomplete),
    }
}

fn development(data_dir: &Path) -> Result<TlsMaterial, TlsError> {
    let ca_path = data_dir.join("ca.pem");
    let cert_path = data_dir.join("server.pem");
    let key_path = data_dir.join("server.key");
    if !(ca_path.exists() && cert_path.exists() && key_path.exists()) {
        let (ca, cert, key) = generate()?;
        write_file(&key_path, key.as_bytes(), true)?;
        write_file(&cert_path, cert.as_bytes(), false)?;
        write_file(&ca_path, ca.as_bytes(), false)?;
        tracing::info!(ca = %ca_path.display(), "generated a development CA and server certificate");
    }
    Ok(TlsMaterial {
        cert_pem: read(&cert_path)?,
        key_pem: zeroize::Zeroizing::new(read(&key_path)?),
        ca_path: Some(ca_path),
    })
}

/// A CA (whose key is discarded) and a server certificate for `localhost`,
/// `127.0.0.1` and `::1`: (ca.pem, server.pem, server.key).
fn generate() -> Result<(String, String, String), TlsError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    let mut ca_name = DistinguishedName::new();
    ca_name.push(DnType::CommonName, "Missive development CA");
    ca_params.distinguished_name = ca_name;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "missive-server");
    params.distinguished_name = name;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}
