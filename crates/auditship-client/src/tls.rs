//! How the client checks the API's TLS certificate: against the public web roots (the default),
//! plus the CAs of a PEM file (a private CA, or a proxy that re-signs traffic), or not at all
//! when a pipeline says so by name (`tls_insecure_skip_verify = true`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::Error;

/// TLS settings of a [`Client`](super::Client).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// A PEM file of CA certificates trusted besides the public web roots.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Only for a test server: anyone on the path can read the key.
    pub insecure_skip_verify: bool,
}

/// What the HTTP client and the socket connector are built with.
pub(crate) struct Built {
    /// The CAs of `ca_file`, DER.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The socket's TLS configuration (`wss://`): the public web roots, plus `ca_file`'s CAs, or
    /// no verification when asked.
    pub socket: Arc<rustls::ClientConfig>,
}

impl TlsOptions {
    /// Read the CA file and build the socket's TLS configuration.
    pub(crate) fn build(&self) -> Result<Built, Error> {
        let extra_roots = match &self.ca_file {
            Some(path) => read_cas(path)?,
            None => Vec::new(),
        };
        crate::install_crypto_provider();
        let mut config = if self.insecure_skip_verify {
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
                .with_no_client_auth()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            for ca in &extra_roots {
                roots.add(ca.clone()).map_err(|e| {
                    Error::Config(format!("tls_ca_file: a certificate is not a usable CA: {e}"))
                })?;
            }
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Built {
            extra_roots,
            socket: Arc::new(config),
        })
    }
}

fn read_cas(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let text = std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "tls_ca_file {}: {e}; give a PEM file of CA certificates",
            path.display()
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("tls_ca_file {}: not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "tls_ca_file {} holds no certificate; give a PEM file with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        )));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Accepts every certificate, still checking that the handshake is signed by it (the signature
/// algorithms are the provider's).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
