//! `herd certs`: the files a herd needs for mutual TLS, made from its config.
//!
//! With `[tls]`, every server shows a certificate of the herd's own CA and takes only the
//! CA's ([`crate::tls`] reads them). This module makes them: the CA (`ca.pem`, `ca.key`)
//! and, for each server, `<Name>.pem` and `<Name>.key`, signed by the CA, naming the server
//! (a DNS name, which links check) and the IPs it is reached at. It is a library function
//! ([`make`]) rather than code in the command line so that tests, the command's and those of
//! TLS links, can make a herd's files in a temporary directory without the binary.
//!
//! What is there is never overwritten without [`Options::force`]: a second run keeps every
//! file and adds those of servers new in the config, signed by the same CA, so the servers
//! already set up need nothing new. Each file is written whole under a temporary name and
//! then given its own, so an interrupted run leaves no half-written file; private keys are
//! created readable by their owner alone, never opened to others even for a moment.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, DnsName, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::config::{HerdConfig, NodeConfig};
use crate::tls;

/// The CA's certificate, which every server needs to know its neighbors' certificates.
pub const CA_CERTIFICATE: &str = "ca.pem";

/// The CA's private key, which signs certificates: whoever has it can make a certificate
/// the herd trusts, so it stays with whoever makes them and is copied to no server.
pub const CA_KEY: &str = "ca.key";

/// How many days a server's certificate is valid unless told otherwise: a year, so that
/// renewing is a yearly chore and a stolen key is not good forever.
pub const DEFAULT_DAYS: u32 = 365;

/// The longest a server's certificate may be made for: the CA's own life, since a
/// certificate is worth nothing once its CA has ended.
pub const MAX_DAYS: u32 = CA_DAYS;

/// How many days a new CA is valid: ten years, since replacing it means copying new files to
/// every server at once.
pub const CA_DAYS: u32 = 3650;

/// The CA's common name, which tools show for it (openssl, browsers).
pub const CA_NAME: &str = "herd CA";

/// How far back a certificate's validity starts: machines whose clocks are a little behind
/// the one that made it still take it at once.
const CLOCK_SLACK: Duration = Duration::from_secs(60 * 60);

const DAY: u64 = 24 * 60 * 60;

/// Why the files could not be made. Each names the file or server at fault and what to do,
/// so that the command line can say it in one line; tests match on the kind.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A server whose name a certificate cannot carry.
    #[error(
        "server name {0:?} is not a DNS name (letters, digits, '-', '_' and '.'), which its \
         certificate must carry: rename the server in the config"
    )]
    NotADnsName(String),
    /// A server named like the CA, whose files would be the CA's.
    #[error(
        "server name {0:?} is taken by the CA's files ({CA_CERTIFICATE}, {CA_KEY}): rename \
         the server in the config"
    )]
    NameOfTheCa(String),
    /// A validity out of range.
    #[error("--days {0}: a certificate must be valid between 1 and {MAX_DAYS} days")]
    Days(u32),
    /// One file of a pair (a certificate and its key) without the other: which one to keep
    /// is not for `herd certs` to guess.
    #[error(
        "{present} is there but {missing} is not: remove {present} to have both made anew, or \
         put {missing} back"
    )]
    HalfPair {
        /// The file that is there.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A server's files without the CA that signed them: a new CA would not vouch for them,
    /// and the herd would refuse them at run time.
    #[error(
        "{certificate} is there but the CA that signed it ({ca}) is not: put the CA back, or \
         make every file anew with --force"
    )]
    WithoutCa {
        /// The server's certificate.
        certificate: PathBuf,
        /// The CA's certificate that is missing.
        ca: PathBuf,
    },
    /// The CA's files are there but cannot sign.
    #[error("{path}: {error}")]
    Ca {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it, in words.
        error: String,
    },
    /// A file or the directory could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's reason: in the message, not a separate source, so it is said once.
        error: io::Error,
    },
    /// rcgen could not make a key or a certificate.
    #[error("cannot make {what}: {error}")]
    Make {
        /// The file it was for.
        what: PathBuf,
        /// rcgen's reason.
        error: rcgen::Error,
    },
}

/// How [`make`] goes about it, as `herd certs`' flags say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Make every file anew, the CA too, replacing those there (`--force`): for a CA whose
    /// key may have leaked, or certificates near their end.
    pub force: bool,
    /// How many days the servers' certificates are valid (`--days`).
    pub days: u32,
}

impl Default for Options {
    /// Keep what is there; certificates for [`DEFAULT_DAYS`].
    fn default() -> Options {
        Options {
            force: false,
            days: DEFAULT_DAYS,
        }
    }
}

/// Whether a file (or a pair) was made by this run or was there and kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Made now.
    Made,
    /// There already, and left as it was.
    Kept,
}

impl fmt::Display for Outcome {
    /// As the report says it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Made => "made",
            Outcome::Kept => "kept",
        })
    }
}

/// One server's files, and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The server's name, as in the config.
    pub name: String,
    /// The IP its clients reach it at (`addr`), to say which machine the files go to.
    pub addr: IpAddr,
    /// Its certificate, `<dir>/<Name>.pem`.
    pub certificate: PathBuf,
    /// Its private key, `<dir>/<Name>.key`.
    pub key: PathBuf,
    /// Whether the pair was made now or kept.
    pub outcome: Outcome,
    /// What is wrong with a kept pair (another CA's, near its end, not naming an address
    /// the config now gives), and how to fix it: a kept pair is not checked otherwise, and
    /// the herd would refuse it only at run time.
    pub warning: Option<String>,
}

/// What [`make`] did: printed by `herd certs`, and looked at by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The directory of the files.
    pub dir: PathBuf,
    /// `<dir>/ca.pem`.
    pub ca_certificate: PathBuf,
    /// `<dir>/ca.key`.
    pub ca_key: PathBuf,
    /// Whether the CA was made now or kept (and signed the new certificates).
    pub ca: Outcome,
    /// How many days the certificates made now are valid.
    pub days: u32,
    /// Each server's files, in the config's order.
    pub servers: Vec<ServerFiles>,
    /// What else the operator should know (the config has no `[tls]` yet, the CA ends
    /// before the certificates it signed).
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    /// A line for the CA, one per server saying which files go to its machine, the notes,
    /// and a last line about `ca.key`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ca = self.ca_certificate.display();
        let ca_key = self.ca_key.display();
        match self.ca {
            Outcome::Made => writeln!(
                f,
                "CA: made {ca} and {ca_key} ({CA_NAME}, valid {} years)",
                CA_DAYS / 365
            )?,
            Outcome::Kept => writeln!(
                f,
                "CA: kept {ca} and {ca_key} (they sign the certificates made now)"
            )?,
        }
        for server in &self.servers {
            write!(
                f,
                "{} ({}): copy {ca}, {}, {} ({}",
                server.name,
                server.addr,
                server.certificate.display(),
                server.key.display(),
                server.outcome
            )?;
            if server.outcome == Outcome::Made {
                write!(f, ", valid {} days", self.days)?;
            }
            if let Some(warning) = &server.warning {
                write!(f, "; warning: {warning}")?;
            }
            writeln!(f, ")")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        writeln!(
            f,
            "{ca_key} stays with whoever makes certificates, on no server: anyone who has it \
             can make a certificate the herd trusts"
        )
    }
}

/// Where `herd certs` writes when not told: the config's `[tls] dir`, where the servers
/// read them, or `certs` for a config without `[tls]` yet.
pub fn default_dir(config: &HerdConfig) -> PathBuf {
    config
        .tls
        .as_ref()
        .map_or_else(|| PathBuf::from("certs"), |tls| tls.dir.clone())
}

/// Makes what is missing of the herd's files in `out` (created, readable by its owner
/// alone, if missing): the CA, unless `ca.pem` and `ca.key` are there (then they sign), and
/// each server's certificate and key, unless both are there. With `options.force`, all of
/// them anew. Refuses, before writing anything, a server name that is not a DNS name, half
/// of a pair, and server files whose CA is gone.
pub fn make(config: &HerdConfig, out: &Path, options: &Options) -> Result<Report, CertsError> {
    if options.days == 0 || options.days > MAX_DAYS {
        return Err(CertsError::Days(options.days));
    }
    for node in &config.nodes {
        if DnsName::try_from(node.name.as_str()).is_err() {
            return Err(CertsError::NotADnsName(node.name.clone()));
        }
        // Its files would be `ca.pem` and `ca.key` (on a filesystem blind to case too).
        if node.name.eq_ignore_ascii_case("ca") {
            return Err(CertsError::NameOfTheCa(node.name.clone()));
        }
    }
    let ca_certificate = out.join(CA_CERTIFICATE);
    let ca_key = out.join(CA_KEY);
    let pair = |name: &str| {
        (
            out.join(format!("{name}.pem")),
            out.join(format!("{name}.key")),
        )
    };

    // Everything that would make the run refuse is looked at before anything is written.
    let ca_there = !options.force && pair_there(&ca_certificate, &ca_key)?;
    let mut kept = Vec::new();
    for node in &config.nodes {
        let (certificate, key) = pair(&node.name);
        let there = !options.force && pair_there(&certificate, &key)?;
        if there && !ca_there {
            return Err(CertsError::WithoutCa {
                certificate,
                ca: ca_certificate,
            });
        }
        kept.push(there);
    }

    create_dir(out)?;
    let now = SystemTime::now();
    let (issuer, ca_outcome) = if ca_there {
        (read_ca(&ca_certificate, &ca_key, now)?, Outcome::Kept)
    } else {
        (
            new_ca(&ca_certificate, &ca_key, now, options.force)?,
            Outcome::Made,
        )
    };

    let mut servers = Vec::with_capacity(config.nodes.len());
    for (node, kept) in config.nodes.iter().zip(kept) {
        let (certificate, key) = pair(&node.name);
        let (outcome, warning) = if kept {
            let warning = check_kept(node, &certificate, &key, &ca_certificate, now)?;
            (Outcome::Kept, warning)
        } else {
            new_server(node, &issuer, &certificate, &key, now, options)?;
            (Outcome::Made, None)
        };
        servers.push(ServerFiles {
            name: node.name.clone(),
            addr: node.addr.ip(),
            certificate,
            key,
            outcome,
            warning,
        });
    }
    sync_dir(out)?;

    let mut notes = Vec::new();
    if config.tls.is_none() {
        notes.push(
            "the config has no [tls] yet: to link over TLS, add [tls] with dir = where each \
             server keeps these files, and a peer_addr for every server"
                .to_owned(),
        );
    }
    let made_until = now + Duration::from_secs(u64::from(options.days) * DAY);
    if servers.iter().any(|s| s.outcome == Outcome::Made) && issuer.not_after < made_until {
        notes.push(format!(
            "the CA in {} ends in {} days, before the certificates it signed now: make \
             everything anew with --force before then",
            ca_certificate.display(),
            days_left(issuer.not_after, now)
        ));
    }
    Ok(Report {
        dir: out.to_owned(),
        ca_certificate,
        ca_key,
        ca: ca_outcome,
        days: options.days,
        servers,
        notes,
    })
}

/// The CA that signs, and when it ends.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

/// Whether both files of a pair are there; one without the other is refused.
fn pair_there(certificate: &Path, key: &Path) -> Result<bool, CertsError> {
    match (exists(certificate)?, exists(key)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(CertsError::HalfPair {
            present: certificate.to_owned(),
            missing: key.to_owned(),
        }),
        (false, true) => Err(CertsError::HalfPair {
            present: key.to_owned(),
            missing: certificate.to_owned(),
        }),
    }
}

fn exists(path: &Path) -> Result<bool, CertsError> {
    path.try_exists().map_err(|error| io_error(path, error))
}

fn io_error(path: &Path, error: io::Error) -> CertsError {
    CertsError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Creates `dir` (and its parents) readable by its owner alone, if missing.
fn create_dir(dir: &Path) -> Result<(), CertsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| io_error(dir, error))
}

/// Makes sure the names given to the new files are on disk, not only their contents.
fn sync_dir(dir: &Path) -> Result<(), CertsError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|error| io_error(dir, error))
}

/// Writes `contents` to `path` with permissions `mode` from its creation: whole under a
/// temporary name beside it, then under its own. Unless `replace`, a file that appeared at
/// `path` meanwhile is not overwritten (the name is given by a hard link, which fails if it
/// is taken).
fn write_file(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CertsError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(
        ".{file_name}.{}.{:016x}.tmp",
        std::process::id(),
        fastrand::u64(..)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| {
            if replace {
                fs::rename(&temporary, path)
            } else {
                fs::hard_link(&temporary, path)?;
                // The file is in place; a temporary name left behind is only clutter.
                let _ = fs::remove_file(&temporary);
                Ok(())
            }
        });
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written.map_err(|error| io_error(path, error))
}

/// The last second a certificate can carry (9999-12-31T23:59:59Z), after the Unix epoch.
const LAST_SECOND: u64 = 253_402_300_799;

/// The validity of a certificate made at `now` for `days`: from a little before `now`.
fn validity(
    params: &mut CertificateParams,
    now: SystemTime,
    days: u32,
    what: &Path,
) -> Result<(), CertsError> {
    let seconds = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let end = seconds + u64::from(days) * DAY;
    if end > LAST_SECOND {
        return Err(CertsError::Make {
            what: what.to_owned(),
            // The clock is past what a certificate can carry.
            error: rcgen::Error::Time,
        });
    }
    // rcgen's dates are the `time` crate's, reached through rcgen so as not to bring that
    // crate's name into this one (where `protocol::time` is a module).
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(seconds.saturating_sub(CLOCK_SLACK.as_secs()));
    params.not_after = epoch + Duration::from_secs(end);
    Ok(())
}

/// Makes a new CA, writes `ca.key` (0600) then `ca.pem` (0644), and returns it to sign.
fn new_ca(
    certificate_path: &Path,
    key_path: &Path,
    now: SystemTime,
    replace: bool,
) -> Result<Ca, CertsError> {
    let made = |error| CertsError::Make {
        what: certificate_path.to_owned(),
        error,
    };
    let key = KeyPair::generate().map_err(made)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    // It signs servers' certificates, not other CAs'.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, now, CA_DAYS, certificate_path)?;
    let certificate = params.self_signed(&key).map_err(made)?;
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600, replace)?;
    write_file(
        certificate_path,
        certificate.pem().as_bytes(),
        0o644,
        replace,
    )?;
    Ok(Ca {
        issuer: Issuer::new(params, key),
        not_after: now + Duration::from_secs(u64::from(CA_DAYS) * DAY),
    })
}

/// Reads the CA that is there, checking that it is a CA, still valid at `now`, and that
/// the key is its own.
fn read_ca(certificate_path: &Path, key_path: &Path, now: SystemTime) -> Result<Ca, CertsError> {
    let refused = |path: &Path, error: String| CertsError::Ca {
        path: path.to_owned(),
        error,
    };
    let key_pem = fs::read_to_string(key_path).map_err(|error| io_error(key_path, error))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        refused(
            key_path,
            format!("not a PKCS#8 private key in PEM that can sign ({e})"),
        )
    })?;
    let der = CertificateDer::from_pem_file(certificate_path).map_err(|e| {
        refused(
            certificate_path,
            format!("no certificate in PEM in it ({e})"),
        )
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|_| {
        refused(
            certificate_path,
            "not a readable X.509 certificate".to_owned(),
        )
    })?;
    if !parsed.is_ca() {
        return Err(refused(
            certificate_path,
            "not a CA's certificate (no CA:true), so what it signs is not trusted".to_owned(),
        ));
    }
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(refused(
            key_path,
            format!("not the key of {}", certificate_path.display()),
        ));
    }
    let not_after = u64::try_from(parsed.validity().not_after.timestamp())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH);
    if not_after <= now {
        return Err(refused(
            certificate_path,
            "the CA has expired, and so has all it signed: make every file anew with --force"
                .to_owned(),
        ));
    }
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| refused(certificate_path, format!("cannot sign with it ({e})")))?;
    Ok(Ca { issuer, not_after })
}

/// The IPs a server is reached or bound at, each once, without the unspecified ones
/// (`0.0.0.0`, `::`), which no peer dials.
fn server_ips(node: &NodeConfig) -> Vec<IpAddr> {
    let addresses = [Some(node.addr), node.peer_addr, node.tls_addr, node.listen];
    let mut seen = BTreeSet::new();
    addresses
        .into_iter()
        .flatten()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified() && seen.insert(*ip))
        .collect()
}

/// Makes a server's key and certificate, signed by the CA, and writes the key (0600), then
/// the certificate (0644).
fn new_server(
    node: &NodeConfig,
    ca: &Ca,
    certificate_path: &Path,
    key_path: &Path,
    now: SystemTime,
    options: &Options,
) -> Result<(), CertsError> {
    let made = |error| CertsError::Make {
        what: certificate_path.to_owned(),
        error,
    };
    let key = KeyPair::generate().map_err(made)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, node.name.as_str());
    let dns_name = node.name.clone().try_into().map_err(made)?;
    params.subject_alt_names = std::iter::once(SanType::DnsName(dns_name))
        .chain(server_ips(node).into_iter().map(SanType::IpAddress))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Each server is both ends of TLS: it answers its neighbors' dials and dials them.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, options.days, certificate_path)?;
    let certificate = params.signed_by(&key, &ca.issuer).map_err(made)?;
    write_file(
        key_path,
        key.serialize_pem().as_bytes(),
        0o600,
        options.force,
    )?;
    write_file(
        certificate_path,
        certificate.pem().as_bytes(),
        0o644,
        options.force,
    )
}

/// What is wrong with a kept pair that the herd would refuse or regret at run time: a
/// certificate not of this CA, ended or near its end, not naming the server or an address
/// the config gives it, or a key others can read.
fn check_kept(
    node: &NodeConfig,
    certificate_path: &Path,
    key_path: &Path,
    ca_path: &Path,
    now: SystemTime,
) -> Result<Option<String>, CertsError> {
    let remake = format!(
        "remove {} and {} to have them made anew",
        certificate_path.display(),
        key_path.display()
    );
    let read = |path: &Path| {
        CertificateDer::from_pem_file(path).map_err(|e| CertsError::Ca {
            path: path.to_owned(),
            error: format!("no certificate in PEM in it ({e})"),
        })
    };
    let ca = read(ca_path)?;
    let Ok(certificate) = read(certificate_path) else {
        return Ok(Some(format!("it holds no certificate: {remake}")));
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(&certificate) else {
        return Ok(Some(format!("not a readable certificate: {remake}")));
    };
    let anchors = match webpki::anchor_from_trusted_cert(&ca) {
        Ok(anchor) => vec![anchor],
        Err(e) => {
            return Err(CertsError::Ca {
                path: ca_path.to_owned(),
                error: format!("not a usable CA certificate ({e})"),
            });
        }
    };
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    // A server both answers its neighbors' dials and dials them.
    let verified = [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ]
    .into_iter()
    .try_for_each(|usage| {
        end_entity
            .verify_for_usage(
                algorithms,
                &anchors,
                &[],
                UnixTime::since_unix_epoch(since_epoch),
                usage,
                None,
                None,
            )
            .map(drop)
    });
    match verified {
        Ok(_) => {}
        Err(webpki::Error::CertExpired { .. }) => {
            return Ok(Some(format!("it has expired: {remake}")));
        }
        // Every herd's CA has the same name: another's signature does not verify.
        Err(webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey) => {
            return Ok(Some(format!(
                "it was not signed by {}, so neighbors refuse it: {remake}",
                ca_path.display()
            )));
        }
        Err(e) => return Ok(Some(format!("neighbors would refuse it ({e}): {remake}"))),
    }
    if !tls::certifies(&certificate, &node.name) {
        return Ok(Some(format!("it does not name {}: {remake}", node.name)));
    }
    let named = certificate_ips(&certificate);
    let missing: Vec<String> = server_ips(node)
        .into_iter()
        .filter(|ip| !named.contains(ip))
        .map(|ip| ip.to_string())
        .collect();
    if !missing.is_empty() {
        return Ok(Some(format!(
            "it does not name {} (the config's addresses changed?): {remake}",
            missing.join(", ")
        )));
    }
    if let Some(not_after) = crate::tls::not_after(&certificate)
        && not_after.duration_since(now).unwrap_or_default() < tls::EXPIRY_WARNING
    {
        return Ok(Some(format!(
            "it expires in {} days: {remake}",
            days_left(not_after, now)
        )));
    }
    let mode = fs::metadata(key_path)
        .map_err(|error| io_error(key_path, error))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Ok(Some(format!(
            "{} can be read by others (mode {:o}): chmod 600 it",
            key_path.display(),
            mode & 0o777
        )));
    }
    Ok(None)
}

/// The IP subject alternative names of a certificate.
fn certificate_ips(certificate: &CertificateDer<'_>) -> Vec<IpAddr> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else {
        return Vec::new();
    };
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whole days from `now` to `end`, none if past.
fn days_left(end: SystemTime, now: SystemTime) -> u64 {
    end.duration_since(now).unwrap_or_default().as_secs() / DAY
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use x509_parser::prelude::X509Certificate;

    use crate::tls::HerdTls;

    /// Two servers: Clark with a peer_addr of its own, Jaquez bound to the unspecified
    /// address (not a name for a certificate) and with an IPv6 peer_addr.
    const HERD: &str = r#"
links = [["Clark", "Jaquez"]]

[places]
url = "http://127.0.0.1:9/nearby"

[[nodes]]
name = "Clark"
addr = "127.0.0.1:10003"
peer_addr = "127.0.0.2:20003"

[[nodes]]
name = "Jaquez"
addr = "10.0.0.4:10004"
listen = "0.0.0.0:10004"
peer_addr = "[::1]:20004"
"#;

    /// A third server, for a herd that grows.
    const BONA: &str = "\n[[nodes]]\nname = \"Bona\"\naddr = \"127.0.0.1:10001\"\n";

    fn config(text: &str) -> HerdConfig {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        HerdConfig::load_with_env(file.path(), Some(HashMap::new())).unwrap()
    }

    /// Makes `text`'s files in `dir` with `options`.
    fn make_in(text: &str, dir: &Path, options: Options) -> Result<Report, CertsError> {
        make(&config(text), dir, &options)
    }

    /// Every file of `dir`, by name, with its bytes.
    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, fs::read(entry.path()).unwrap())
            })
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The process's umask, from the kernel's account of it (not set, which would race with
    /// the other tests creating files).
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .unwrap();
        u32::from_str_radix(line.trim(), 8).unwrap()
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    /// Whether the certificate at `path` chains to the CA at `ca`, for a server's use as both
    /// ends of TLS.
    fn chains(path: &Path, ca: &Path) -> Result<(), webpki::Error> {
        let certificate = der(path);
        let ca = der(ca);
        let anchors = [webpki::anchor_from_trusted_cert(&ca).unwrap()];
        let end_entity = webpki::EndEntityCert::try_from(&certificate).unwrap();
        let algorithms = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        for usage in [
            webpki::KeyUsage::server_auth(),
            webpki::KeyUsage::client_auth(),
        ] {
            end_entity.verify_for_usage(
                algorithms,
                &anchors,
                &[],
                UnixTime::now(),
                usage,
                None,
                None,
            )?;
        }
        Ok(())
    }

    fn days_from_now(end: SystemTime) -> f64 {
        end.duration_since(SystemTime::now()).unwrap().as_secs_f64() / DAY as f64
    }

    #[test]
    fn a_ca_and_a_pair_per_server_are_made_keys_readable_by_their_owner_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("herd").join("certs");
        let report = make_in(HERD, &dir, Options::default()).unwrap();
        assert_eq!(report.ca, Outcome::Made);
        let made: Vec<_> = report
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.outcome, s.warning.clone()))
            .collect();
        assert_eq!(
            made,
            [
                ("Clark", Outcome::Made, None),
                ("Jaquez", Outcome::Made, None)
            ]
        );

        // Exactly the files of the herd: no temporary one left behind.
        let names: Vec<_> = files(&dir).into_keys().collect();
        assert_eq!(
            names,
            [
                "Clark.key",
                "Clark.pem",
                "Jaquez.key",
                "Jaquez.pem",
                "ca.key",
                "ca.pem"
            ]
        );
        assert_eq!(mode(&dir), 0o700 & !umask());
        for key in ["ca.key", "Clark.key", "Jaquez.key"] {
            assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
        }
        for certificate in ["ca.pem", "Clark.pem", "Jaquez.pem"] {
            assert_eq!(
                mode(&dir.join(certificate)),
                0o644 & !umask(),
                "{certificate}"
            );
        }

        let ca_der = der(&dir.join("ca.pem"));
        let ca = parse(&ca_der);
        assert!(ca.is_ca());
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
        let cn: Vec<_> = ca.subject().iter_common_name().collect();
        assert_eq!(cn.len(), 1);
        assert_eq!(cn[0].as_str().unwrap(), CA_NAME);
        let ca_end = UNIX_EPOCH + Duration::from_secs(ca.validity().not_after.timestamp() as u64);
        assert!((days_from_now(ca_end) - 3650.0).abs() < 1.0);

        let expected: [(&str, &[&str]); 2] = [
            ("Clark", &["127.0.0.1", "127.0.0.2"]),
            ("Jaquez", &["10.0.0.4", "::1"]),
        ];
        for (name, ips) in expected {
            let certificate_der = der(&dir.join(format!("{name}.pem")));
            let certificate = parse(&certificate_der);
            assert!(!certificate.is_ca(), "{name}");
            let usage = certificate.extended_key_usage().unwrap().unwrap().value;
            assert!(usage.server_auth && usage.client_auth, "{name}");
            let sans = &certificate
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names;
            let dns: Vec<_> = sans
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect();
            assert_eq!(dns, [name.to_owned()]);
            let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
            assert_eq!(certificate_ips(&certificate_der), ips, "{name}");
        }

        let text = report.to_string();
        let lines: Vec<_> = text.lines().collect();
        let d = dir.display();
        assert!(
            lines.contains(
                &format!(
                    "Clark (127.0.0.1): copy {d}/ca.pem, {d}/Clark.pem, {d}/Clark.key (made, valid \
                 365 days)"
                )
                .as_str()
            ),
            "{text}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&format!(
                "Jaquez (10.0.0.4): copy {d}/ca.pem, {d}/Jaquez.pem, {d}/Jaquez.key (made"
            ))),
            "{text}"
        );
        assert!(text.contains("the config has no [tls] yet"), "{text}");
        let last = lines.last().unwrap();
        assert!(
            last.starts_with(&format!(
                "{d}/ca.key stays with whoever makes certificates, on no server"
            )),
            "{text}"
        );
    }

    #[test]
    fn each_certificate_loads_names_its_own_server_alone_and_chains_to_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        make_in(HERD, dir, Options::default()).unwrap();
        for (name, other) in [("Clark", "Jaquez"), ("Jaquez", "Clark")] {
            let tls = HerdTls::load(dir, name).unwrap();
            assert_eq!(tls.expiry_warning(SystemTime::now()), None, "{name}");
            let certificate = der(&dir.join(format!("{name}.pem")));
            assert!(tls::certifies(&certificate, name), "{name}");
            assert!(!tls::certifies(&certificate, other), "{name} as {other}");
            chains(&dir.join(format!("{name}.pem")), &dir.join("ca.pem")).unwrap();
        }
    }

    /// What each end of a TLS connection over an in-memory pipe came to: the dialler's
    /// result, and the answerer's, with the certificate the dialler showed.
    async fn handshake(
        dialling: Arc<ClientConfig>,
        neighbor: &str,
        links_in: Arc<ServerConfig>,
    ) -> (io::Result<()>, io::Result<CertificateDer<'static>>) {
        let (dialler_end, answerer_end) = tokio::io::duplex(1 << 16);
        let name = ServerName::try_from(neighbor.to_owned()).unwrap();
        let dial = async move {
            let connector = tokio_rustls::TlsConnector::from(dialling);
            let mut tls = connector.connect(name, dialler_end).await?;
            tls.write_all(b"hello\n").await?;
            tls.flush().await?;
            let mut answer = [0; 3];
            tls.read_exact(&mut answer).await?;
            assert_eq!(&answer, b"ok\n");
            Ok(())
        };
        let answer = async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(links_in);
            let mut tls = acceptor.accept(answerer_end).await?;
            let mut hello = [0; 6];
            tls.read_exact(&mut hello).await?;
            tls.write_all(b"ok\n").await?;
            tls.flush().await?;
            let shown = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            Ok(shown.into_owned())
        };
        let both = async { tokio::join!(dial, answer) };
        tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("the handshake hung")
    }

    #[tokio::test]
    async fn two_servers_shake_hands_over_tls_13_and_another_cas_certificate_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ours = tmp.path().join("ours");
        let theirs = tmp.path().join("theirs");
        make_in(HERD, &ours, Options::default()).unwrap();
        make_in(HERD, &theirs, Options::default()).unwrap();
        let clark = HerdTls::load(&ours, "Clark").unwrap();
        let jaquez = HerdTls::load(&ours, "Jaquez").unwrap();

        let (dialled, answered) = handshake(
            Arc::clone(&clark.dialling),
            "Jaquez",
            Arc::clone(&jaquez.links_in),
        )
        .await;
        dialled.unwrap();
        let shown = answered.unwrap();
        assert!(tls::certifies(&shown, "Clark") && !tls::certifies(&shown, "Jaquez"));

        // Clark dialling Bona's address and reached Jaquez: the name does not match.
        let (dialled, _) = handshake(
            Arc::clone(&clark.dialling),
            "Bona",
            Arc::clone(&jaquez.links_in),
        )
        .await;
        let error = dialled.unwrap_err().to_string();
        assert!(error.contains("not valid for name"), "{error}");

        // Another herd's Clark does not take our Jaquez's certificate...
        let stranger = HerdTls::load(&theirs, "Clark").unwrap();
        let (dialled, answered) = handshake(
            Arc::clone(&stranger.dialling),
            "Jaquez",
            Arc::clone(&jaquez.links_in),
        )
        .await;
        // (Every herd's CA has the same name: the other's signature does not verify.)
        let error = dialled.unwrap_err().to_string();
        assert!(error.contains("BadSignature"), "{error}");
        assert!(answered.is_err());

        // ...and our Jaquez takes no certificate of theirs, even from one that trusts ours.
        let mut roots = RootCertStore::empty();
        roots.add(der(&ours.join("ca.pem"))).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let impostor = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![der(&theirs.join("Clark.pem"))],
                PrivateKeyDer::from_pem_file(theirs.join("Clark.key")).unwrap(),
            )
            .unwrap();
        let (dialled, answered) =
            handshake(Arc::new(impostor), "Jaquez", Arc::clone(&jaquez.links_in)).await;
        assert!(dialled.is_err());
        let error = answered.unwrap_err().to_string();
        assert!(error.contains("BadSignature"), "{error}");
    }

    #[test]
    fn a_second_run_keeps_every_file_as_it_was_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        make_in(HERD, dir, Options::default()).unwrap();
        let before = files(dir);
        let report = make_in(HERD, dir, Options::default()).unwrap();
        assert_eq!(files(dir), before);
        assert_eq!(report.ca, Outcome::Kept);
        for server in &report.servers {
            assert_eq!(
                (server.outcome, &server.warning),
                (Outcome::Kept, &None),
                "{}",
                server.name
            );
        }
        let text = report.to_string();
        assert!(text.starts_with("CA: kept "), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.ends_with(".key (kept)")).count(),
            2,
            "{text}"
        );
        assert!(!text.contains("(made"), "{text}");
    }

    #[test]
    fn a_server_added_later_gets_its_files_from_the_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        make_in(HERD, dir, Options::default()).unwrap();
        let before = files(dir);
        let report = make_in(&format!("{HERD}{BONA}"), dir, Options::default()).unwrap();
        let outcomes: Vec<_> = report
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("Clark", Outcome::Kept),
                ("Jaquez", Outcome::Kept),
                ("Bona", Outcome::Made)
            ]
        );
        assert_eq!(report.ca, Outcome::Kept);
        let mut after = files(dir);
        assert_eq!(mode(&dir.join("Bona.key")), 0o600);
        assert!(after.remove("Bona.pem").is_some() && after.remove("Bona.key").is_some());
        assert_eq!(after, before, "the files there are unchanged");
        chains(&dir.join("Bona.pem"), &dir.join("ca.pem")).unwrap();
        let bona = HerdTls::load(dir, "Bona").unwrap();
        assert!(tls::certifies(&der(&bona.certificate_path), "Bona"));
    }

    #[test]
    fn force_makes_every_file_anew_with_a_new_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        make_in(HERD, &dir, Options::default()).unwrap();
        let before = files(&dir);
        let old_clark = tmp.path().join("old-Clark.pem");
        fs::write(&old_clark, &before["Clark.pem"]).unwrap();
        let force = Options {
            force: true,
            ..Options::default()
        };
        let report = make_in(HERD, &dir, force).unwrap();
        assert_eq!(report.ca, Outcome::Made);
        assert!(report.servers.iter().all(|s| s.outcome == Outcome::Made));
        let after = files(&dir);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
        for (name, bytes) in &after {
            assert_ne!(bytes, &before[name], "{name} was not made anew");
        }
        for key in ["ca.key", "Clark.key", "Jaquez.key"] {
            assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
        }
        chains(&dir.join("Clark.pem"), &dir.join("ca.pem")).unwrap();
        // Every herd's CA has the same name: the old CA's signature does not verify.
        assert_eq!(
            chains(&old_clark, &dir.join("ca.pem")),
            Err(webpki::Error::InvalidSignatureForPublicKey)
        );
    }

    #[test]
    fn days_sets_how_long_a_server_certificate_lasts() {
        let tmp = tempfile::tempdir().unwrap();
        let short = tmp.path().join("short");
        let one_day = Options {
            days: 1,
            ..Options::default()
        };
        make_in(HERD, &short, one_day).unwrap();
        let clark = HerdTls::load(&short, "Clark").unwrap();
        let warning = clark.expiry_warning(SystemTime::now()).unwrap();
        assert!(warning.contains("expires in 0 days"), "{warning}");
        assert!((days_from_now(clark.not_after) - 1.0).abs() < 0.01);
        // A second run keeps it, and says it is near its end.
        let report = make_in(HERD, &short, Options::default()).unwrap();
        let warning = report.servers[0].warning.clone().unwrap();
        assert!(warning.contains("expires in 0 days"), "{warning}");

        let year = tmp.path().join("year");
        make_in(HERD, &year, Options::default()).unwrap();
        let clark = HerdTls::load(&year, "Clark").unwrap();
        assert_eq!(clark.expiry_warning(SystemTime::now()), None);
        assert!((days_from_now(clark.not_after) - 365.0).abs() < 0.01);

        for days in [0, MAX_DAYS + 1] {
            let options = Options {
                days,
                ..Options::default()
            };
            let error = make_in(HERD, &tmp.path().join("none"), options).unwrap_err();
            assert!(matches!(error, CertsError::Days(d) if d == days), "{error}");
        }
        assert!(!tmp.path().join("none").exists());
    }

    #[test]
    fn half_a_pair_or_a_server_without_its_ca_is_refused_and_nothing_written() {
        let tmp = tempfile::tempdir().unwrap();
        let full = tmp.path().join("full");
        make_in(HERD, &full, Options::default()).unwrap();
        let cases: [(&[&str], &str, &str); 4] = [
            (&["ca.pem"], "ca.pem", "ca.key"),
            (&["ca.key"], "ca.key", "ca.pem"),
            (
                &["ca.pem", "ca.key", "Jaquez.key"],
                "Jaquez.key",
                "Jaquez.pem",
            ),
            (&["ca.pem", "ca.key", "Clark.pem"], "Clark.pem", "Clark.key"),
        ];
        for (there, present, missing) in cases {
            let dir = tempfile::tempdir().unwrap();
            for name in there {
                fs::copy(full.join(name), dir.path().join(name)).unwrap();
            }
            let error = make_in(HERD, dir.path(), Options::default()).unwrap_err();
            let message = error.to_string();
            match error {
                CertsError::HalfPair {
                    present: p,
                    missing: m,
                } => {
                    assert_eq!((p, m), (dir.path().join(present), dir.path().join(missing)));
                }
                other => panic!("{there:?}: {other}"),
            }
            assert!(message.contains(&format!("{missing} is not")), "{message}");
            assert_eq!(files(dir.path()).len(), there.len(), "{there:?}: written");
        }

        let dir = tempfile::tempdir().unwrap();
        for name in ["Clark.pem", "Clark.key"] {
            fs::copy(full.join(name), dir.path().join(name)).unwrap();
        }
        let error = make_in(HERD, dir.path(), Options::default()).unwrap_err();
        assert!(
            matches!(&error, CertsError::WithoutCa { ca, .. } if ca == &dir.path().join("ca.pem")),
            "{error}"
        );
        assert_eq!(files(dir.path()).len(), 2);
    }

    #[test]
    fn a_ca_key_not_of_the_ca_certificate_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
        make_in(HERD, &ours, Options::default()).unwrap();
        make_in(HERD, &theirs, Options::default()).unwrap();
        fs::copy(theirs.join("ca.key"), ours.join("ca.key")).unwrap();
        let error = make_in(&format!("{HERD}{BONA}"), &ours, Options::default()).unwrap_err();
        assert!(
            matches!(&error, CertsError::Ca { path, .. } if path == &ours.join("ca.key")),
            "{error}"
        );
        assert!(error.to_string().contains("not the key of"), "{error}");
        assert!(!ours.join("Bona.pem").exists());
    }

    #[test]
    fn a_kept_pair_the_herd_would_refuse_is_warned_about() {
        let tmp = tempfile::tempdir().unwrap();
        let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
        make_in(HERD, &ours, Options::default()).unwrap();
        make_in(HERD, &theirs, Options::default()).unwrap();
        for name in ["Clark.pem", "Clark.key"] {
            fs::copy(theirs.join(name), ours.join(name)).unwrap();
        }
        let moved = HERD.replace("127.0.0.2:20003", "127.0.0.9:20003");
        let report = make_in(&moved, &ours, Options::default()).unwrap();
        let clark = report.servers[0].warning.clone().unwrap();
        assert!(clark.contains("was not signed by"), "{clark}");
        let jaquez = report.servers[1].warning.clone();
        assert_eq!(jaquez, None);

        let report = make_in(
            &HERD.replace("10.0.0.4:10004", "10.0.0.5:10004"),
            &ours,
            Options::default(),
        )
        .unwrap();
        let jaquez = report.servers[1].warning.clone().unwrap();
        assert!(jaquez.contains("does not name 10.0.0.5"), "{jaquez}");
        assert!(
            report
                .to_string()
                .contains("; warning: it does not name 10.0.0.5")
        );
    }

    #[test]
    fn a_name_a_certificate_cannot_carry_or_the_cas_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs");
        let error =
            make_in(&HERD.replace("Jaquez", "Jaquez!"), &dir, Options::default()).unwrap_err();
        assert!(
            matches!(&error, CertsError::NotADnsName(name) if name == "Jaquez!"),
            "{error}"
        );
        assert!(error.to_string().contains("not a DNS name"), "{error}");
        let error = make_in(&HERD.replace("Jaquez", "CA"), &dir, Options::default()).unwrap_err();
        assert!(
            matches!(&error, CertsError::NameOfTheCa(name) if name == "CA"),
            "{error}"
        );
        assert!(!dir.exists());
    }
}
