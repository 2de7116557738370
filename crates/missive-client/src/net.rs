//! The gRPC connection: TLS with the configured CA, and error classification.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{ClientError, Result, chain_text, classify_transport_text};
use crate::limits::CONNECT_TIMEOUT;

/// Where and how to reach the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `https://host:port`.
    pub url: String,
    /// PEM file of the CA to trust; `None` means the system roots.
    pub ca: Option<PathBuf>,
}

impl ServerConfig {
    /// The host name of the URL: the name the TLS certificate is verified
    /// for, which the login and registration transcripts name (protocol v2).
    pub fn name(&self) -> Result<String> {
        let url = self.url.trim_end_matches('/');
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ClientError::BadServerUrl(url.to_owned()))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default()
        } else {
            authority.rsplit_once(':').map_or(authority, |(h, _)| h)
        };
        if host.is_empty() {
            return Err(ClientError::BadServerUrl(url.to_owned()));
        }
        Ok(host.to_ascii_lowercase())
    }

    /// The CA to trust for the account in `home`: the one given (`--ca` or
    /// `MISSIVE_CA`), else the one remembered in `HOME/ca.pem` at
    /// registration, else none (the system roots). Never a file that merely
    /// sits in the working directory.
    pub fn resolve_ca(home: &Path, given: Option<PathBuf>) -> Option<PathBuf> {
        given.or_else(|| {
            let p = home.join(crate::store::CA_FILE);
            p.exists().then_some(p)
        })
    }
}

/// Opens a TLS channel to the server (connects eagerly so failures surface
/// as one clear error here).
pub async fn connect(config: &ServerConfig) -> Result<Channel> {
    let url = config.url.trim_end_matches('/').to_owned();
    if !url.starts_with("https://") {
        return Err(ClientError::BadServerUrl(url));
    }
    let mut tls = ClientTlsConfig::new();
    match &config.ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: path.clone(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => tls = tls.with_native_roots(),
    }
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| ClientError::BadServerUrl(url.clone()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| classify_transport_text(&url, &chain_text(&e)))?;
    endpoint
        .connect()
        .await
        .map_err(|e| classify_transport_text(&url, &chain_text(&e)))
}
