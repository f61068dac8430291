//! A self-signed certificate for `localhost`, written where a bus's `[tls]`
//! settings can name it, and removed when dropped.

use std::path::PathBuf;

use arqon_config::Config;

/// The certificate and key files of a TLS test bus.
pub struct SelfSigned {
    /// The certificate and its key, e.g. for a client's root store.
    pub key: rcgen::CertifiedKey<rcgen::KeyPair>,
    /// The certificate, PEM, as written to `cert_path`.
    pub cert_pem: String,
    /// Where the certificate is.
    pub cert_path: PathBuf,
    dir: PathBuf,
}

impl SelfSigned {
    /// A fresh certificate for `localhost`; `tag` keeps concurrent tests'
    /// directories apart.
    pub fn new(tag: &str) -> SelfSigned {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = std::env::temp_dir().join(format!("arqon-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        let cert_pem = key.cert.pem();
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
        SelfSigned { key, cert_pem, cert_path, dir }
    }

    /// A TLS acceptor serving this certificate (an https application in a
    /// test).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use tokio_rustls::rustls::{ServerConfig, crypto, pki_types::PrivateKeyDer};
        let key = PrivateKeyDer::Pkcs8(self.key.signing_key.serialize_der().into());
        let config = ServerConfig::builder_with_provider(std::sync::Arc::new(crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.key.cert.der().clone()], key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }

    /// `config` serving TLS with this certificate.
    pub fn config(&self, mut config: Config) -> Config {
        config.tls.cert = self.cert_path.display().to_string();
        config.tls.key = self.dir.join("key.pem").display().to_string();
        config
    }
}

impl std::fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSigned").field("cert_path", &self.cert_path).finish_non_exhaustive()
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
