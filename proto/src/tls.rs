//! Optional TLS on fleet's gRPC connections, mutual TLS included. [`Tls`]
//! holds the PEM files a process is configured with, read and checked once
//! at start by [`Tls::load`] (so that a missing, empty or unparseable file,
//! or a key that is not its certificate's, stops the process before it
//! binds anything), and turns them into tonic's server and client settings.
//! [`Tls::default`] is TLS off: plain-text HTTP/2, as before TLS existed.
//!
//! Not here: where the paths come from (the `fleet` config's `[tls]`
//! section, whose key names the errors use), which connections are built
//! with it (every fleet server and client goes through [`crate::connect`];
//! the env bridge's connection stays plain text) and the bearer token
//! ([`crate::auth`]), which TLS keeps from being read on the wire.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake may take, on either end, before the connection
/// is dropped: a peer that opens a connection and says nothing must not
/// hold a server task for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[tls]` keys as configured: paths of PEM files, and a name. An empty
/// string is an unset key; all empty is TLS off.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsFiles<'a> {
    /// This process's certificate chain, its own certificate first.
    pub cert_file: &'a str,
    /// The private key of `cert_file`'s first certificate.
    pub key_file: &'a str,
    /// The CA certificates clients check servers against.
    pub ca_file: &'a str,
    /// With it, servers require client certificates issued by these CAs.
    pub client_ca_file: &'a str,
    /// The name clients expect in servers' certificates; empty: the host
    /// part of the address they dial.
    pub server_name: &'a str,
}

/// Why a TLS setting cannot be used. Each message names the `[tls]` key
/// and, for a file, its path; none quotes what a key file holds.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.{key}: cannot read {path}")]
    Read {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls.{key}: {path} {problem}")]
    Content { key: &'static str, path: String, problem: String },
    #[error(
        "tls.{key} is empty, but TLS is on (tls.{because} is set): with TLS every fleet process needs \
         tls.cert_file, tls.key_file and tls.ca_file"
    )]
    Missing { key: &'static str, because: &'static str },
    #[error("tls.server_name: `{0}` is neither a DNS name nor an IP address")]
    ServerName(String),
}

/// The TLS settings of one process: off, or the files it was configured
/// with, already checked. Cloning is cheap; `Debug` never shows the key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tls(Option<Arc<Loaded>>);

/// The checked contents of the `[tls]` files, as PEM text (what tonic takes).
#[derive(PartialEq, Eq)]
struct Loaded {
    /// This process's certificate chain: what it serves with, and what it
    /// presents as a client when a server asks for a certificate (mutual TLS).
    cert: Vec<u8>,
    /// The private key of `cert`. Never printed.
    key: Vec<u8>,
    /// The CAs a client checks a server's certificate against (and only
    /// these: the system's roots are never trusted).
    ca: Vec<u8>,
    /// With it, a server refuses clients without a certificate issued by
    /// one of these CAs: mutual TLS.
    client_ca: Option<Vec<u8>>,
    /// The name a client expects in a server's certificate; `None`: the
    /// host part of the address it dials.
    server_name: Option<String>,
}

impl Tls {
    /// Reads and checks the files `files` names. All keys empty: TLS off.
    /// Any key set turns TLS on, and then `cert_file`, `key_file` and
    /// `ca_file` are all required, because every fleet process is a client
    /// and the serving ones need an identity. Each file must be readable
    /// PEM holding what its key says; the key must be the certificate's.
    pub fn load(files: &TlsFiles<'_>) -> Result<Self, TlsError> {
        let keys = [
            ("cert_file", files.cert_file),
            ("key_file", files.key_file),
            ("ca_file", files.ca_file),
            ("client_ca_file", files.client_ca_file),
            ("server_name", files.server_name),
        ];
        let Some(&(because, _)) = keys.iter().find(|(_, value)| !value.is_empty()) else {
            return Ok(Self::default());
        };
        for &(key, value) in &keys[..3] {
            if value.is_empty() {
                return Err(TlsError::Missing { key, because });
            }
        }
        let (cert_pem, certs) = read_certificates("cert_file", files.cert_file)?;
        let (key_pem, key) = read_key("key_file", files.key_file)?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(certs, key, &provider).map_err(|error| TlsError::Content {
            key: "key_file",
            path: files.key_file.to_string(),
            problem: format!(
                "is not a usable key for the certificate in tls.cert_file ({}): {error}",
                files.cert_file
            ),
        })?;
        let ca = read_trust_anchors("ca_file", files.ca_file)?;
        let client_ca = match files.client_ca_file {
            "" => None,
            path => Some(read_trust_anchors("client_ca_file", path)?),
        };
        let server_name = match files.server_name {
            "" => None,
            name => {
                ServerName::try_from(name).map_err(|_| TlsError::ServerName(name.to_string()))?;
                Some(name.to_string())
            }
        };
        Ok(Self(Some(Arc::new(Loaded {
            cert: cert_pem,
            key: key_pem,
            ca,
            client_ca,
            server_name,
        }))))
    }

    /// Whether connections use TLS.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Whether servers require client certificates (mutual TLS).
    pub fn is_mutual(&self) -> bool {
        self.0.as_ref().is_some_and(|loaded| loaded.client_ca.is_some())
    }

    /// The URI scheme of a connection: `https` with TLS, `http` without.
    pub fn scheme(&self) -> &'static str {
        if self.is_on() { "https" } else { "http" }
    }

    /// What a server serves with (its certificate, and the client CAs it
    /// requires under mutual TLS); `None`: TLS off.
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        let loaded = self.0.as_ref()?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&loaded.cert, &loaded.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(client_ca) = &loaded.client_ca {
            config = config.client_ca_root(Certificate::from_pem(client_ca));
        }
        Some(config)
    }

    /// What a client connects with (the CAs it trusts, the certificate it
    /// presents when asked, the name it expects); `None`: TLS off.
    pub fn client_config(&self) -> Option<ClientTlsConfig> {
        let loaded = self.0.as_ref()?;
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&loaded.ca))
            .identity(Identity::from_pem(&loaded.cert, &loaded.key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(name) = &loaded.server_name {
            config = config.domain_name(name.clone());
        }
        Some(config)
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Tls(off)"),
            Some(loaded) => f
                .debug_struct("Tls")
                .field("mutual", &loaded.client_ca.is_some())
                .field("server_name", &loaded.server_name)
                .finish_non_exhaustive(),
        }
    }
}

/// Whether `error` or anything beneath it is a failed TLS handshake (a
/// certificate not trusted or not presented, a peer that does not speak
/// TLS), as opposed to a server that is not up yet: the first needs a
/// person, so it is worth a warning.
pub fn is_handshake_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<rustls::Error>() {
            return true;
        }
        // io::Error's `source` skips the error it wraps: look at it here.
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The file's bytes; an unreadable or blank file is an error naming `key`.
fn read(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_string(),
        source,
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(content(key, path, "is empty".into()));
    }
    Ok(bytes)
}

fn content(key: &'static str, path: &str, problem: String) -> TlsError {
    TlsError::Content {
        key,
        path: path.to_string(),
        problem,
    }
}

/// The PEM text of a file of certificates and the certificates in it (at
/// least one).
fn read_certificates(key: &'static str, path: &str) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| content(key, path, format!("is not valid PEM: {error}")))?;
    if certs.is_empty() {
        return Err(content(key, path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok((pem, certs))
}

/// The PEM text of a key file and the key in it. The error never shows
/// the file's contents.
fn read_key(key: &'static str, path: &str) -> Result<(Vec<u8>, PrivateKeyDer<'static>), TlsError> {
    let pem = read(key, path)?;
    let private_key = PrivateKeyDer::from_pem_slice(&pem).map_err(|error| match error {
        rustls::pki_types::pem::Error::NoItemsFound => content(
            key,
            path,
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, or an RSA or EC one)".into(),
        ),
        _ => content(key, path, "is not a valid PEM private key".into()),
    })?;
    Ok((pem, private_key))
}

/// The PEM text of a CA file whose every certificate can be a trust anchor.
fn read_trust_anchors(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    let (pem, certs) = read_certificates(key, path)?;
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|error| {
            content(
                key,
                path,
                format!("holds a certificate (number {}) that cannot be a CA: {error}", index + 1),
            )
        })?;
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        /// A CA and a certificate it issued for `localhost`, written as
        /// ca.pem, cert.pem and key.pem.
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
            Self { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        fn write(&self, name: &str, text: &str) -> String {
            std::fs::write(self.dir.path().join(name), text).unwrap();
            self.path(name)
        }
    }

    fn message(files: TlsFiles<'_>) -> String {
        let error = Tls::load(&files).unwrap_err();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            text.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        text
    }

    #[test]
    fn no_keys_is_tls_off() {
        let tls = Tls::load(&TlsFiles::default()).unwrap();
        assert!(!tls.is_on() && !tls.is_mutual());
        assert_eq!(tls.scheme(), "http");
        assert!(tls.server_config().is_none() && tls.client_config().is_none());
        assert_eq!(format!("{tls:?}"), "Tls(off)");
    }

    #[test]
    fn good_files_turn_it_on_and_never_print_the_key() {
        let files = Files::new();
        let (cert, key, ca) = (files.path("cert.pem"), files.path("key.pem"), files.path("ca.pem"));
        let plain = TlsFiles {
            cert_file: &cert,
            key_file: &key,
            ca_file: &ca,
            ..Default::default()
        };
        let tls = Tls::load(&plain).unwrap();
        assert!(tls.is_on() && !tls.is_mutual());
        assert_eq!(tls.scheme(), "https");
        assert!(tls.server_config().is_some() && tls.client_config().is_some());
        let mutual = Tls::load(&TlsFiles {
            client_ca_file: &ca,
            server_name: "localhost",
            ..plain
        })
        .unwrap();
        assert!(mutual.is_mutual());
        assert_ne!(tls, mutual);
        let key_text = std::fs::read_to_string(&key).unwrap();
        let body = key_text.lines().nth(1).unwrap();
        assert!(!format!("{mutual:?}").contains(body), "{mutual:?}");
    }

    #[test]
    fn any_key_turns_it_on_and_then_the_identity_and_the_ca_are_required() {
        let files = Files::new();
        let (cert, key, ca) = (files.path("cert.pem"), files.path("key.pem"), files.path("ca.pem"));
        let error = message(TlsFiles {
            ca_file: &ca,
            ..Default::default()
        });
        assert!(
            error.starts_with("tls.cert_file is empty") && error.contains("tls.ca_file is set"),
            "{error}"
        );
        let error = message(TlsFiles {
            cert_file: &cert,
            ca_file: &ca,
            ..Default::default()
        });
        assert!(error.starts_with("tls.key_file is empty"), "{error}");
        let error = message(TlsFiles {
            cert_file: &cert,
            key_file: &key,
            server_name: "localhost",
            ..Default::default()
        });
        assert!(error.starts_with("tls.ca_file is empty"), "{error}");
        let error = message(TlsFiles {
            cert_file: &cert,
            key_file: &key,
            ca_file: &ca,
            server_name: "not a name",
            ..Default::default()
        });
        assert!(error.contains("tls.server_name") && error.contains("not a name"), "{error}");
    }

    #[test]
    fn a_bad_file_is_an_error_naming_its_key_and_path() {
        let files = Files::new();
        let (cert, key, ca) = (files.path("cert.pem"), files.path("key.pem"), files.path("ca.pem"));
        let missing = files.path("missing.pem");
        let empty = files.write("empty.pem", "\n");
        let garbage = files.write("garbage.pem", "not PEM at all\n");
        let broken = files.write("broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
        let dir = files.dir.path().display().to_string();
        let good = TlsFiles {
            cert_file: &cert,
            key_file: &key,
            ca_file: &ca,
            client_ca_file: &ca,
            server_name: "",
        };
        for (key_name, bad, expected) in [
            ("cert_file", &missing, "cannot read"),
            ("cert_file", &empty, "is empty"),
            ("cert_file", &garbage, "holds no PEM certificate"),
            ("cert_file", &broken, "is not valid PEM"),
            ("cert_file", &key, "holds no PEM certificate"),
            ("cert_file", &dir, "cannot read"),
            ("key_file", &missing, "cannot read"),
            ("key_file", &cert, "holds no PEM private key"),
            ("ca_file", &empty, "is empty"),
            ("ca_file", &garbage, "holds no PEM certificate"),
            ("client_ca_file", &missing, "cannot read"),
            ("client_ca_file", &key, "holds no PEM certificate"),
        ] {
            let mut files = good;
            match key_name {
                "cert_file" => files.cert_file = bad,
                "key_file" => files.key_file = bad,
                "ca_file" => files.ca_file = bad,
                _ => files.client_ca_file = bad,
            }
            let error = message(files);
            assert!(
                error.starts_with(&format!("tls.{key_name}: ")) && error.contains(bad.as_str()) && error.contains(expected),
                "{key_name}={bad}: {error}"
            );
        }
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_an_error() {
        let files = Files::new();
        let other = files.write("other-key.pem", &KeyPair::generate().unwrap().serialize_pem());
        let (cert, ca) = (files.path("cert.pem"), files.path("ca.pem"));
        let error = message(TlsFiles {
            cert_file: &cert,
            key_file: &other,
            ca_file: &ca,
            ..Default::default()
        });
        assert!(
            error.starts_with(&format!("tls.key_file: {other}")) && error.contains(&cert),
            "{error}"
        );
    }

    #[test]
    fn handshake_failures_are_told_from_other_errors() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_handshake_failure(&refused));
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(is_handshake_failure(&tls));
    }
}
