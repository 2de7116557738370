//! The TOML configuration file (`--config PATH` / `MISSIVE_CONFIG`): every
//! setting of the command line, under the flag's long name with dashes as
//! underscores. Flags beat environment variables, which beat the file.
//!
//! ```toml
//! listen = "0.0.0.0:7443"
//! data_dir = "/var/lib/missive"
//! retention = "30days"
//! metrics_listen = "127.0.0.1:9464"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::proxy::TrustedProxies;

/// Settings read from a configuration file; absent keys are `None`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--database`.
    pub database: Option<String>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--retention`, as humantime text ("30days", "12h").
    pub retention: Option<String>,
    /// `--mailbox-limit`.
    pub mailbox_limit: Option<u32>,
    /// `--disable-rate-limits`.
    pub disable_rate_limits: Option<bool>,
    /// `--nats`.
    pub nats: Option<String>,
    /// `--nats-prefix`.
    pub nats_prefix: Option<String>,
    /// `--log`.
    pub log: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--franking-keys`.
    pub franking_keys: Option<PathBuf>,
    /// `--proxy-protocol-from`, the same comma-separated list as the flag.
    pub proxy_protocol_from: Option<String>,
    /// `--trusted-proxy`, the same comma-separated list as the flag.
    pub trusted_proxy: Option<String>,
    /// `--storage-reserve`, a size such as "16MiB".
    pub storage_reserve: Option<String>,
    /// `--attachment-quota`, a size such as "2GiB".
    pub attachment_quota: Option<String>,
    /// `--server-name`, repeated: a list such as `["chat.example.org"]`.
    pub server_names: Option<Vec<String>>,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("the configuration file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What and where, from the TOML parser.
        message: String,
    },
}

impl FileSettings {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigFileError::Parse {
            path: path.into(),
            message,
        })
    }

    /// Parses TOML text; the error is the parser's description, on one line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let settings: Self = toml::from_str(text).map_err(|e| {
            let mut sentence = one_line(&e.to_string());
            // Quote the offending line, so the key is named even for a type error.
            if let Some(line) = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.rfind('\n').map_or(0, |i| i + 1))
                .and_then(|start| text[start..].lines().next())
                .map(str::trim)
                .filter(|line| !line.is_empty())
            {
                sentence.push_str(&format!(" (in `{line}`)"));
            }
            sentence
        })?;
        if let Some(retention) = &settings.retention {
            humantime::parse_duration(retention)
                .map_err(|e| format!("retention {retention:?} is not a duration: {e}"))?;
        }
        for (key, list) in [
            ("proxy_protocol_from", &settings.proxy_protocol_from),
            ("trusted_proxy", &settings.trusted_proxy),
        ] {
            if let Some(list) = list {
                TrustedProxies::parse(list).map_err(|e| format!("{key}: {e}"))?;
            }
        }
        if let Some(reserve) = &settings.storage_reserve {
            parse_size(reserve).map_err(|e| format!("storage_reserve: {e}"))?;
        }
        if let Some(quota) = &settings.attachment_quota {
            parse_size(quota).map_err(|e| format!("attachment_quota: {e}"))?;
        }
        Ok(settings)
    }
}

/// Parses a byte size such as "16MiB", "512k" or "0" (binary units; "MB" is
/// read as MiB, as operators usually mean).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size such as 16MiB")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is not a size such as 16MiB"))
}

/// The TOML parser's multi-line report (with a source excerpt) as one line.
fn one_line(report: &str) -> String {
    let mut lines = report.lines().map(str::trim).filter(|l| !l.is_empty());
    let head = lines.next().unwrap_or("invalid TOML").to_owned();
    // The last line is the description ("unknown field `x`, expected one of …").
    match lines.next_back() {
        Some(last) if !last.starts_with('|') && !last.starts_with('^') => {
            format!("{head}: {last}")
        }
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_key_parses() {
        let settings = FileSettings::parse(
            r#"
            listen = "0.0.0.0:7443"
            data_dir = "/var/lib/missive"
            database = "postgres://missive@db/missive"
            tls_cert = "/etc/missive/cert.pem"
            tls_key = "/etc/missive/key.pem"
            retention = "12h"
            mailbox_limit = 500
            disable_rate_limits = false
            nats = "nats://127.0.0.1:4222"
            nats_prefix = "prod.missive"
            log = "warn"
            metrics_listen = "127.0.0.1:9464"
            franking_keys = "/etc/missive/franking.keys"
            proxy_protocol_from = "10.0.0.0/8, 192.0.2.7"
            trusted_proxy = "fd00::/8"
            storage_reserve = "64MiB"
            attachment_quota = "1GiB"
            "#,
        )
        .unwrap();
        assert_eq!(
            settings.franking_keys.as_deref(),
            Some(Path::new("/etc/missive/franking.keys"))
        );
        assert_eq!(settings.storage_reserve.as_deref(), Some("64MiB"));
        assert_eq!(settings.attachment_quota.as_deref(), Some("1GiB"));
        let names = FileSettings::parse("server_names = [\"chat.example.org\", \"b.example\"]")
            .unwrap()
            .server_names;
        assert_eq!(
            names,
            Some(vec!["chat.example.org".to_owned(), "b.example".to_owned()])
        );
        assert_eq!(settings.listen.unwrap().port(), 7443);
        assert_eq!(settings.mailbox_limit, Some(500));
        assert_eq!(settings.metrics_listen.unwrap().port(), 9464);
        assert_eq!(settings.nats_prefix.as_deref(), Some("prod.missive"));
    }

    #[test]
    fn mistakes_are_one_sentence() {
        let unknown = FileSettings::parse("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(unknown.contains("lisen"), "{unknown}");
        assert!(!unknown.contains('\n'), "{unknown}");
        let wrong_type = FileSettings::parse("mailbox_limit = \"many\"").unwrap_err();
        assert!(
            wrong_type.contains("mailbox_limit") || wrong_type.contains("integer"),
            "{wrong_type}"
        );
        let duration = FileSettings::parse("retention = \"forever\"").unwrap_err();
        assert!(duration.contains("forever"), "{duration}");
        let address = FileSettings::parse("listen = \"localhost\"").unwrap_err();
        assert!(!address.is_empty());
        let proxies = FileSettings::parse("trusted_proxy = \"10.0.0.0/99\"").unwrap_err();
        assert!(proxies.contains("trusted_proxy"), "{proxies}");
        let reserve = FileSettings::parse("storage_reserve = \"lots\"").unwrap_err();
        assert!(reserve.contains("storage_reserve"), "{reserve}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512 k"), Ok(512 << 10));
        assert!(parse_size("16 parsecs").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }
}
