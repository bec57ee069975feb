//! Accepting TLS: HTTP/1.1 is offered beside HTTP/2 only where it is served, and a client
//! stalled in its handshake holds up no other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use concord_platform::pki::{demo_agencies, ensure_demo, ServerTls};
use concord_platform::server::tls_incoming;
use futures::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A server on 127.0.0.1:0 taking connections with `tls`, offering HTTP/1.1 when `http1`.
async fn listen(tls: &ServerTls, http1: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Box::pin(tls_incoming(listener, tls.with_alpn(http1)));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(conn) = incoming.next().await {
            held.push(conn.unwrap());
        }
    });
    addr
}

/// The protocol agreed when a client trusting `ca` and offering `alpn` connects to `addr`.
async fn negotiate(
    ca: &std::path::Path,
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let connecting = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let tls = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .expect("the handshake was held up")?;
    Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

#[tokio::test]
async fn http1_is_offered_only_where_it_is_served_and_http2_is_preferred() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ensure_demo(dir.path(), &["localhost"], &demo_agencies()).unwrap();
    let tls = pki.server().server_config().unwrap();
    let ca = dir.path().join("ca.pem");

    let both = listen(&tls, true).await;
    let h1 = negotiate(&ca, both, &[b"http/1.1"]).await.unwrap();
    assert_eq!(h1.as_deref(), Some(&b"http/1.1"[..]));
    let h2 = negotiate(&ca, both, &[b"http/1.1", b"h2"]).await.unwrap();
    assert_eq!(h2.as_deref(), Some(&b"h2"[..]), "HTTP/2 when the client speaks it");
    let none = negotiate(&ca, both, &[]).await.unwrap();
    assert_eq!(none, None, "a client that names no protocol still connects");

    let h2_only = listen(&tls, false).await;
    let h2 = negotiate(&ca, h2_only, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(h2.as_deref(), Some(&b"h2"[..]));
    let refused = negotiate(&ca, h2_only, &[b"http/1.1"]).await;
    assert!(refused.is_err(), "HTTP/1.1 alone is refused where only HTTP/2 is served");
}

#[tokio::test]
async fn a_client_stalled_in_its_handshake_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ensure_demo(dir.path(), &["localhost"], &demo_agencies()).unwrap();
    let tls = pki.server().server_config().unwrap();
    let addr = listen(&tls, false).await;
    // Connected, and silent: no ClientHello ever comes.
    let _stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let agreed = negotiate(&dir.path().join("ca.pem"), addr, &[b"h2"]).await.unwrap();
    assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
}
