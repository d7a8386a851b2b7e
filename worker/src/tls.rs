//! TLS to PostgreSQL and Redis (rustls, Mozilla roots compiled in).
//!
//! A private CA comes from a PEM file, usually a Secret the operator mounts
//! (`DATABASE_CA_FILE`, `REDIS_CA_FILE`). The file is read and checked at
//! start-up, so a wrong mount fails the pod with a clear message instead of
//! every connection failing later. Every Redis client is built here, so a
//! `rediss://` URL gets the same CA everywhere (consumer, monitor, generate).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read CA file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} is not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("CA file {path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    Empty { path: PathBuf },
    #[error("CA file {path}: certificate {index} is not a usable CA certificate")]
    Certificate {
        path: PathBuf,
        index: usize,
        #[source]
        source: rustls::Error,
    },
}

/// Reads a PEM file of CA certificates and checks that each one parses as a
/// trust anchor. Returns the PEM bytes as read.
pub fn read_ca_file(path: &Path) -> Result<Vec<u8>, CaFileError> {
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|source| CaFileError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
        roots.add(cert).map_err(|source| CaFileError::Certificate {
            path: path.to_path_buf(),
            index: index + 1,
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}

/// Whether PostgreSQL certificates are checked against a CA in this mode
/// (`require` and `prefer` encrypt without checking, like libpq without a root file).
pub fn pg_mode_verifies(mode: PgSslMode) -> bool {
    matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull)
}

/// Adds the CA of `DATABASE_CA_FILE` to connect options parsed from the URL
/// (which may name its own `sslrootcert`; the setting wins).
pub fn pg_with_ca(
    options: PgConnectOptions,
    ca_file: Option<&Path>,
) -> Result<PgConnectOptions, CaFileError> {
    Ok(match ca_file {
        Some(path) => options.ssl_root_cert_from_pem(read_ca_file(path)?),
        None => options,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RedisClientError {
    #[error(transparent)]
    Ca(#[from] CaFileError),
    #[error("REDIS_URL is not a valid Redis URL")]
    Url(#[source] redis::RedisError),
}

/// The one constructor of Redis clients: `rediss://` URLs verify the server
/// against `ca_file` when given, against the Mozilla roots otherwise. Every
/// connection carries TCP keepalives and a user timeout ([`redis_tcp`]).
pub fn redis_client(url: &str, ca_file: Option<&Path>) -> Result<redis::Client, RedisClientError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(RedisClientError::Url)?
        .set_tcp_settings(redis_tcp());
    match ca_file {
        Some(path) => {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(read_ca_file(path)?),
            };
            redis::Client::build_with_tls(info, certificates).map_err(RedisClientError::Url)
        }
        None => redis::Client::open(info).map_err(RedisClientError::Url),
    }
}

/// TCP settings of Redis connections (ADR 0019): keepalive probes after 10 s
/// of silence, every 5 s, 3 of them, and unacknowledged data given up after
/// 25 s, so that a vanished Redis host or a partition is noticed by the
/// kernel (the connection fails and is made again) instead of after hours.
pub fn redis_tcp() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(u64::from(
            crate::tcp::KEEPALIVE_IDLE_S,
        )))
        .with_interval(std::time::Duration::from_secs(u64::from(
            crate::tcp::KEEPALIVE_INTERVAL_S,
        )))
        .with_retries(crate::tcp::KEEPALIVE_COUNT);
    redis::io::tcp::TcpSettings::default()
        .set_keepalive(keepalive)
        .set_user_timeout(std::time::Duration::from_millis(u64::from(
            crate::tcp::TCP_USER_TIMEOUT_MS,
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_connections_carry_keepalives() {
        for url in ["redis://127.0.0.1:6379", "rediss://example.org:6380"] {
            let client = redis_client(url, None).expect("client");
            let tcp = client.get_connection_info().tcp_settings();
            assert!(tcp.keepalive().is_some(), "{url}");
            assert_eq!(
                tcp.user_timeout(),
                Some(std::time::Duration::from_millis(25_000)),
                "{url}"
            );
        }
    }
    use std::io::Write;

    fn temp_file(contents: &[u8]) -> tempfile_like::TempPath {
        tempfile_like::TempPath::with_contents(contents)
    }

    /// A tiny temp-file helper (no extra dependency): removed on drop.
    mod tempfile_like {
        use std::path::{Path, PathBuf};
        pub struct TempPath(PathBuf);
        impl TempPath {
            pub fn with_contents(contents: &[u8]) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "pgw-ca-{}-{}.pem",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, contents).expect("write temp file");
                TempPath(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn missing_file_names_the_path_and_the_os_error() {
        let err = read_ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        let chain = telemetry::ErrorChain(&err).to_string();
        assert!(chain.contains("/nonexistent/ca.pem"), "{chain}");
        assert!(chain.contains("No such file"), "{chain}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let file = temp_file(b"not a certificate\n");
        let err = read_ca_file(file.path()).unwrap_err();
        assert!(matches!(err, CaFileError::Empty { .. }), "{err}");
    }

    #[test]
    fn a_certificate_section_with_garbage_is_refused() {
        let mut pem = Vec::new();
        writeln!(
            pem,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
        )
        .unwrap();
        let file = temp_file(&pem);
        let err = read_ca_file(file.path()).unwrap_err();
        assert!(
            matches!(err, CaFileError::Certificate { index: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn only_verify_modes_check_certificates() {
        assert!(pg_mode_verifies(PgSslMode::VerifyFull));
        assert!(pg_mode_verifies(PgSslMode::VerifyCa));
        for mode in [
            PgSslMode::Disable,
            PgSslMode::Allow,
            PgSslMode::Prefer,
            PgSslMode::Require,
        ] {
            assert!(!pg_mode_verifies(mode));
        }
    }
}
