//! `wss://` and `https://`: the rustls configuration a connection uses. The web's public
//! roots (webpki-roots) plus whatever [`ClientOptions::tls_roots_pem`] adds,
//! with the ring provider the server uses too.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::{ClientError, ClientOptions};

/// The TLS connector for `uri`: `None` for `ws://` (plain TCP).
pub(crate) fn connector(uri: &Uri, options: &ClientOptions) -> Result<Option<Connector>, ClientError> {
    if uri.scheme_str() != Some("wss") {
        return Ok(None);
    }
    Ok(Some(Connector::Rustls(client_config(options)?)))
}

/// The rustls configuration for a TLS connection (`wss://`, `https://`).
pub(crate) fn client_config(options: &ClientOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(pem) = &options.tls_roots_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| tls_error(format!("tls_roots_pem is not PEM: {e}")))?;
            roots.add(cert).map_err(|e| tls_error(format!("tls_roots_pem: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(tls_error("tls_roots_pem holds no certificate".to_owned()));
        }
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn tls_error(message: String) -> ClientError {
    ClientError::Transport(format!("TLS: {message}"))
}
