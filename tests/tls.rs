//! End-to-end tests of what TLS adds to a herd (the links' own tests run over TLS too, in
//! `tests/herd_links.rs`): only the herd's servers speak for the herd, clients may use TLS,
//! and certificates near their end or renewed on disk are handled while servers run.
//! Certificates are made in each test with `herd::certs`, never checked in.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::herds::{Herd, HerdBuilder, KIWI_POSITION, Links, free_port};
use common::{eventually, within};
use herd::tls::HerdTls;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A herd of three over TLS: A - B - C.
async fn three() -> Herd {
    HerdBuilder::new(&["A", "B", "C"], &[("A", "B"), ("B", "C")])
        .links_over(Links::Tls)
        .start()
        .await
}

/// Connects to `addr` over TLS as the holder of `tls`'s certificate, expecting the server
/// to be `server`; returns the stream, or why the handshake failed.
async fn dial(
    addr: SocketAddr,
    tls: &HerdTls,
    server: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = within(TcpStream::connect(addr), "connect").await?;
    let connector = TlsConnector::from(Arc::clone(&tls.dialling));
    let name = ServerName::try_from(server.to_owned()).unwrap();
    within(connector.connect(name, stream), "handshake").await
}

/// Reads what the other end sends until it closes (or fails), within the test's deadline.
async fn rest(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut rest = Vec::new();
    let _ = within(stream.read_to_end(&mut rest), "read to the end").await;
    String::from_utf8_lossy(&rest).into_owned()
}

/// The herd's certificates, as server `name` holds them.
fn files_of(herd: &Herd, name: &str) -> HerdTls {
    HerdTls::load(&herd.dir.path().join("certs"), name).unwrap()
}

#[actix_rt::test]
async fn a_plain_text_hello_on_the_links_port_is_refused_and_nothing_is_stored() {
    let mut herd = three().await;
    let b = herd.node("B").peer_addr().unwrap();
    let mut plain = within(TcpStream::connect(b), "connect").await.unwrap();
    plain
        .write_all(b"PEER A\nAT A +0.000000000 forged +1+1 1700000000\n")
        .await
        .unwrap();
    assert_eq!(rest(&mut plain).await, "? PEER A\n");
    assert_eq!(herd.whatsat("B", "forged").await.unwrap(), None);
    herd.stop_all().await;
    let log = herd.log("B");
    assert!(log.contains("plain text from 127.0.0.1:"), "{log}");
}

#[actix_rt::test]
async fn a_certificate_of_another_ca_is_refused_with_the_reason_and_nothing_is_stored() {
    let mut herd = three().await;
    // Another herd with the same names: its A is not this herd's A.
    let other = tempfile::tempdir().unwrap();
    herd::certs::make(&herd.config, other.path(), &Default::default()).unwrap();
    let stranger = HerdTls::load(other.path(), "A").unwrap();
    let b = herd.node("B").peer_addr().unwrap();
    // The stranger does not trust this herd's B either: the handshake fails on its side
    // first. With its trust set to this herd's CA, B refuses its certificate.
    assert!(dial(b, &stranger, "B").await.is_err());
    let mixed = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(ca_roots(&herd.dir.path().join("certs/ca.pem")))
    .with_client_auth_cert(
        rustls::pki_types::CertificateDer::pem_file_iter(other.path().join("A.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect(),
        rustls::pki_types::PrivateKeyDer::from_pem_file(other.path().join("A.key")).unwrap(),
    )
    .unwrap();
    let stream = within(TcpStream::connect(b), "connect").await.unwrap();
    let name = ServerName::try_from("B".to_owned()).unwrap();
    let connected = TlsConnector::from(Arc::new(mixed))
        .connect(name, stream)
        .await;
    if let Ok(mut stream) = connected {
        // TLS 1.3 finishes the client's side before the server has checked its certificate:
        // the refusal comes as the end of the connection.
        let _ = stream
            .write_all(b"PEER A\nAT A +0.000000000 forged +1+1 1700000000\n")
            .await;
        assert_eq!(rest(&mut stream).await, "");
    }
    assert_eq!(herd.whatsat("B", "forged").await.unwrap(), None);
    assert_eq!(herd.whatsat("C", "forged").await.unwrap(), None);
    herd.stop_all().await;
    let log = herd.log("B");
    assert!(log.contains("TLS handshake from 127.0.0.1:"), "{log}");
    assert!(log.contains("failed: "), "the reason is said: {log}");
}

/// The roots of trust in a CA file.
fn ca_roots(path: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_file_iter(path).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    roots
}

#[actix_rt::test]
async fn a_server_of_the_herd_cannot_speak_for_another() {
    let mut herd = three().await;
    // C's own certificate, signed by the herd's CA, with a hello that says A.
    let c = files_of(&herd, "C");
    let b = herd.node("B").peer_addr().unwrap();
    let mut stream = dial(b, &c, "B")
        .await
        .expect("C's certificate is the herd's");
    stream
        .write_all(b"PEER A\nAT A +0.000000000 forged +1+1 1700000000\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(stream);
    let mut first = String::new();
    within(lines.read_line(&mut first), "read the refusal")
        .await
        .unwrap();
    assert_eq!(first, "? PEER A\n");
    assert_eq!(herd.whatsat("B", "forged").await.unwrap(), None);
    assert_eq!(herd.whatsat("A", "forged").await.unwrap(), None);
    // And a link that dials checks the name too: C's certificate is not B's.
    let a = herd.node("A").peer_addr().unwrap();
    let error = dial(a, &c, "B").await.unwrap_err().to_string();
    assert!(error.contains("certificate"), "{error}");
    herd.stop_all().await;
    let log = herd.log("B");
    assert!(
        log.contains("hello as A refused: the connection's certificate"),
        "{log}"
    );
}

#[actix_rt::test]
async fn a_client_on_the_tls_port_gets_its_answers() {
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut herd = HerdBuilder::new(&["A", "B"], &[("A", "B")])
        .links_over(Links::Tls)
        .tls_addr("A", tls_addr)
        .start()
        .await;
    // A client trusts the herd's CA and shows no certificate.
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(ca_roots(&herd.dir.path().join("certs/ca.pem")))
        .with_no_client_auth();
    let stream = within(TcpStream::connect(tls_addr), "connect")
        .await
        .unwrap();
    let name = ServerName::try_from("A".to_owned()).unwrap();
    let stream = within(
        TlsConnector::from(Arc::new(config)).connect(name, stream),
        "handshake",
    )
    .await
    .unwrap();
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    write
        .write_all(format!("IAMAT secret {KIWI_POSITION} 1700000000\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    within(read.read_line(&mut answer), "the answer")
        .await
        .unwrap();
    assert!(
        answer.starts_with("AT A ")
            && answer.ends_with(" secret +34.068930-118.445127 1700000000\n"),
        "{answer}"
    );
    herd.eventually_know(&["B"], "secret", answer.trim_end())
        .await;
    herd.stop_all().await;
}

#[actix_rt::test]
async fn a_certificate_near_its_end_is_warned_about_at_start() {
    let mut herd = HerdBuilder::new(&["A"], &[])
        .links_over(Links::Tls)
        .start()
        .await;
    herd.stop_all().await;
    // Renewed for one day only, then started again.
    let options = herd::certs::Options {
        force: true,
        days: 1,
    };
    herd::certs::make(&herd.config, &herd.dir.path().join("certs"), &options).unwrap();
    herd.restart("A").await;
    eventually(Duration::from_secs(10), "the warning", async || {
        let log = herd.log("A");
        match log.contains("A.pem expires in 0 days") {
            true => Ok(()),
            false => Err(log),
        }
    })
    .await;
    herd.stop_all().await;
}

#[actix_rt::test]
async fn certificates_renewed_on_disk_are_used_by_new_links_once_read_again() {
    let mut herd = HerdBuilder::new(&["A", "B"], &[("A", "B")])
        .links_over(Links::Tls)
        .start()
        .await;
    let before = herd.iamat("A", "before", KIWI_POSITION, "1700000000").await;
    herd.eventually_know(&["B"], "before", &before).await;
    // A new CA and new certificates for both; A reads them again (SIGUSR1 does this).
    let options = herd::certs::Options {
        force: true,
        ..Default::default()
    };
    herd::certs::make(&herd.config, &herd.dir.path().join("certs"), &options).unwrap();
    herd.node("A").reload_tls();
    // The links already up keep their sessions.
    let kept = herd.iamat("A", "kept", KIWI_POSITION, "1700000001").await;
    herd.eventually_know(&["B"], "kept", &kept).await;
    // B restarts with the new files: A's new links to it work only with the new ones.
    herd.stop("B").await;
    herd.restart("B").await;
    let after = herd.iamat("A", "after", KIWI_POSITION, "1700000002").await;
    herd.eventually_know(&["B"], "after", &after).await;
    let back = herd.iamat("B", "back", KIWI_POSITION, "1700000003").await;
    herd.eventually_know(&["A"], "back", &back).await;
    herd.stop_all().await;
    let log = herd.log("A");
    assert!(log.contains("TLS files read again"), "{log}");
}
