//! TLS between the herd's servers, and for clients on `tls_addr`: the files `herd certs`
//! makes, read into what rustls needs, and who a certificate says a peer is.
//!
//! With `[tls] dir`, every link is TLS 1.3 with both ends authenticated: each server shows
//! `<dir>/<Name>.pem` (its key in `<Name>.key`), and takes only certificates signed by the
//! herd's own CA (`<dir>/ca.pem`). A certificate proves a name (its DNS subject alternative
//! name): a link that dials a neighbor checks that the neighbor's certificate names it, and
//! a server takes a hello only from a connection whose certificate names the server the
//! hello says ([`certifies`]). A stranger on the network, a server of another herd, or a
//! server of this herd claiming another's name is refused.
//!
//! The files are read at start and again on SIGUSR1 ([`HerdTls::load`]), so a certificate
//! rotated on disk is used by new connections without a restart; connections already open
//! keep the session they have.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How soon before its end a certificate is warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Why a server's TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or is not PEM of what it should hold.
    #[error("{path}: {error} (make the herd's files with `herd certs`)")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong, in words.
        error: String,
    },
    /// rustls refused the certificate, the key or the CA.
    #[error("{what}: {error}")]
    Rustls {
        /// Which of them.
        what: String,
        /// rustls's reason, in words.
        error: String,
    },
}

/// A server's TLS settings, as its files say.
#[derive(Debug, Clone)]
pub struct HerdTls {
    /// For links this server dials: it shows its certificate and takes only the CA's.
    pub dialling: Arc<ClientConfig>,
    /// For its peer port: it shows its certificate, and a neighbor must show one of the CA's.
    pub links_in: Arc<ServerConfig>,
    /// For its TLS port for clients: it shows its certificate, and clients show none.
    pub clients_in: Arc<ServerConfig>,
    /// When the server's certificate stops being valid.
    pub not_after: SystemTime,
    /// The server's certificate file, for what is said about it.
    pub certificate_path: PathBuf,
}

impl HerdTls {
    /// Reads server `name`'s certificate and key, and the herd's CA, from `dir`.
    pub fn load(dir: &Path, name: &str) -> Result<HerdTls, TlsError> {
        let ca_path = dir.join("ca.pem");
        let certificate_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let file_error = |path: &Path, error: String| TlsError::File {
            path: path.to_owned(),
            error,
        };
        let read_certificates = |path: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error(path, pem_error(e)))?;
            if certificates.is_empty() {
                return Err(file_error(path, "no certificate in it".to_owned()));
            }
            Ok(certificates)
        };
        let mut roots = RootCertStore::empty();
        for ca in read_certificates(&ca_path)? {
            roots.add(ca).map_err(|e| TlsError::Rustls {
                what: ca_path.display().to_string(),
                error: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let chain = read_certificates(&certificate_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| file_error(&key_path, pem_error(e)))?;
        let not_after = not_after(&chain[0]).ok_or_else(|| {
            file_error(
                &certificate_path,
                "not a readable X.509 certificate".to_owned(),
            )
        })?;

        let refused = |what: &Path| {
            let what = what.display().to_string();
            move |e: rustls::Error| TlsError::Rustls {
                what,
                error: e.to_string(),
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls13 = |provider: &Arc<CryptoProvider>| {
            ClientConfig::builder_with_provider(Arc::clone(provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
        };
        let dialling = tls13(&provider)
            .map_err(refused(&certificate_path))?
            .with_root_certificates(Arc::clone(&roots))
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(refused(&key_path))?;
        let server = || {
            ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(refused(&certificate_path))
        };
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::Rustls {
                    what: ca_path.display().to_string(),
                    error: e.to_string(),
                })?;
        let links_in = server()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(refused(&key_path))?;
        let clients_in = server()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(refused(&key_path))?;
        Ok(HerdTls {
            dialling: Arc::new(dialling),
            links_in: Arc::new(links_in),
            clients_in: Arc::new(clients_in),
            not_after,
            certificate_path,
        })
    }

    /// What to say about the certificate's end, if it is near or past: `None` while it has
    /// more than [`EXPIRY_WARNING`] to go.
    pub fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        let path = self.certificate_path.display();
        match self.not_after.duration_since(now) {
            Err(_) => Some(format!(
                "the certificate {path} has expired: neighbors refuse its links (renew it \
                 with `herd certs --force`, then SIGUSR1)"
            )),
            Ok(left) if left < EXPIRY_WARNING => Some(format!(
                "the certificate {path} expires in {} days (renew it with `herd certs \
                 --force`, then SIGUSR1)",
                left.as_secs() / 86_400
            )),
            Ok(_) => None,
        }
    }
}

/// Whether `certificate`, which the TLS handshake verified against the herd's CA, names
/// server `name` (as a DNS subject alternative name).
pub fn certifies(certificate: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(certificate) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(name) else {
        return false;
    };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// The name a link checks its neighbor's certificate against. Config validation makes sure
/// every server's name is a DNS name when TLS is on.
pub fn server_name(name: &str) -> io::Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| io::Error::other(format!("{name:?} is not a DNS name")))
}

/// When a certificate stops being valid.
pub(crate) fn not_after(certificate: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let seconds = u64::try_from(parsed.validity().not_after.timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// A PEM reading error, in words.
fn pem_error(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "nothing of the right kind in it".to_owned(),
        other => format!("not PEM: {other}"),
    }
}

/// The TLS settings in force for one server, shared by its listeners and links, and
/// replaced whole when the files are read again: a connection takes what is current when
/// it opens and keeps it.
#[derive(Clone, Debug)]
pub struct CurrentTls(std::rc::Rc<std::cell::RefCell<Arc<HerdTls>>>);

impl CurrentTls {
    /// Settings in force from now on.
    pub fn new(tls: HerdTls) -> CurrentTls {
        CurrentTls(std::rc::Rc::new(std::cell::RefCell::new(Arc::new(tls))))
    }

    /// The settings in force.
    pub fn get(&self) -> Arc<HerdTls> {
        Arc::clone(&self.0.borrow())
    }

    /// Puts `tls` in force for the connections opened from now on.
    pub fn set(&self, tls: HerdTls) {
        *self.0.borrow_mut() = Arc::new(tls);
    }
}
