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

/// The names clients may sign in login, registration and add-device
/// transcripts (protocol v2): the names the operator configured
/// (`--server-name`) and every name the node's TLS end-entity certificate is
/// valid for. A client signs the name it verified TLS for, so a look-alike
/// server that relays a challenge gets a signature naming itself, which this
/// server refuses.
#[derive(Clone, Default)]
pub struct ServerNames {
    /// Configured names, ASCII lower case.
    configured: Vec<String>,
    /// The first certificate of the chain the node serves (DER).
    certificate: Option<rustls::pki_types::CertificateDer<'static>>,
}

impl std::fmt::Debug for ServerNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerNames")
            .field("configured", &self.configured)
            .field("certificate", &self.certificate.is_some())
            .finish()
    }
}

impl ServerNames {
    /// `configured` names plus those the first certificate of `cert_pem` is
    /// valid for (none if it does not parse: the listener refuses it anyway).
    pub fn new(configured: &[String], cert_pem: &[u8]) -> Self {
        use rustls::pki_types::pem::PemObject;
        let certificate = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem)
            .next()
            .and_then(Result::ok);
        Self {
            configured: configured
                .iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect(),
            certificate,
        }
    }

    /// Whether `name` names this server: configured, or covered by the
    /// certificate (a DNS name or an IP address; `[::1]` as in a URL too).
    pub fn accepts(&self, name: &str) -> bool {
        if name.is_empty() {
            return false;
        }
        let folded = name.to_ascii_lowercase();
        if self.configured.contains(&folded) {
            return true;
        }
        let Some(der) = &self.certificate else {
            return false;
        };
        let Ok(parsed) = rustls::server::ParsedCertificate::try_from(der) else {
            return false;
        };
        // `[::1]` as in a URL: brackets only around an IPv6 address.
        let host = match folded.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            Some(inner) if inner.parse::<std::net::Ipv6Addr>().is_ok() => inner,
            Some(_) => return false,
            None => &folded,
        };
        match rustls::pki_types::ServerName::try_from(host) {
            Ok(server_name) => rustls::client::verify_server_name(&parsed, &server_name).is_ok(),
            Err(_) => false,
        }
    }

    /// The sentence refusing `name` when it does not name this server.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if self.accepts(name) {
            Ok(())
        } else if name.is_empty() {
            Err("the server name is missing: a client signs the name it verified TLS for".into())
        } else {
            Err(format!(
                "the server name {name:?} is not a name of this server"
            ))
        }
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_come_from_the_configuration_and_the_certificate() {
        let (_, cert, _) = generate().unwrap();
        let names = ServerNames::new(&["Chat.Example.org".to_owned()], cert.as_bytes());
        for good in [
            "chat.example.org",
            "CHAT.example.ORG",
            "localhost",
            "LocalHost",
            "127.0.0.1",
            "::1",
            "[::1]",
        ] {
            assert!(names.accepts(good), "{good}");
            assert!(names.check(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "evil.example",
            "chat.example.org.evil",
            "127.0.0.2",
            "local host",
            "localhost\0",
            "[localhost]",
        ] {
            assert!(!names.accepts(bad), "{bad:?}");
        }
        assert_eq!(
            names.check("evil.example").unwrap_err(),
            "the server name \"evil.example\" is not a name of this server"
        );
        assert!(names.check("").unwrap_err().contains("missing"));
    }

    #[test]
    fn without_a_usable_certificate_only_configured_names_count() {
        let names = ServerNames::new(&["a.example".to_owned(), " ".to_owned()], b"not pem");
        assert!(names.accepts("a.example"));
        assert!(!names.accepts("localhost"));
        assert!(!names.accepts(" "));
        let none = ServerNames::default();
        assert!(!none.accepts("localhost"));
    }
}
