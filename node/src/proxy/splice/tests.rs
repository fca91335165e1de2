//! Splicing two real loopback TCP connections: bytes and half-closes cross both
//! ways, a reset crosses as a reset, and an idle connection or a passed deadline
//! ends both sides. (Real time, not a paused clock: a paused clock would jump
//! to the idle timer while loopback bytes are still in the kernel.)

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Progress, Side, Totals, splice};

/// A connected pair of loopback sockets: (the end a test drives, the end
/// handed to the splice).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (outside, inside) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (outside.unwrap(), inside.unwrap().0)
}

/// A client and a backend spliced together: the test holds `client` and
/// `backend`; the splice runs in a task whose result is `done`.
struct Spliced {
    client: TcpStream,
    backend: TcpStream,
    progress: Arc<Progress>,
    done: tokio::task::JoinHandle<Totals>,
}

async fn spliced(idle: Duration, deadline: Option<tokio::time::Instant>) -> Spliced {
    let (client, a) = pair().await;
    let (backend, b) = pair().await;
    let progress = Arc::new(Progress::default());
    let p = progress.clone();
    let done =
        tokio::spawn(async move { splice(Side::tcp(a), Side::tcp(b), idle, deadline, p).await });
    Spliced {
        client,
        backend,
        progress,
        done,
    }
}

#[tokio::test]
async fn bytes_and_half_closes_cross_both_ways() {
    let mut s = spliced(Duration::from_secs(60), None).await;
    s.client.write_all(b"hello").await.unwrap();
    s.client.shutdown().await.unwrap();
    let mut heard = Vec::new();
    s.backend.read_to_end(&mut heard).await.unwrap();
    assert_eq!(
        heard, b"hello",
        "the client's end reaches the backend as an end"
    );
    // The other direction still flows after the first one ended.
    s.backend.write_all(b"world!").await.unwrap();
    s.backend.shutdown().await.unwrap();
    let mut answer = Vec::new();
    s.client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"world!");
    let totals = s.done.await.unwrap();
    assert_eq!(
        totals,
        Totals {
            a_to_b: 5,
            b_to_a: 6,
            aborted: false
        }
    );
    assert_eq!(
        s.progress.a_to_b.load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[tokio::test]
async fn a_reset_crosses_as_a_reset_not_an_end() {
    let mut s = spliced(Duration::from_secs(60), None).await;
    s.client.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    s.backend.read_exact(&mut one).await.unwrap();
    s.client.set_zero_linger().unwrap();
    drop(s.client);
    let mut rest = Vec::new();
    let outcome = s.backend.read_to_end(&mut rest).await;
    assert_eq!(
        outcome.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert!(s.done.await.unwrap().aborted);
}

#[tokio::test]
async fn an_idle_connection_is_closed_on_both_sides() {
    let mut s = spliced(Duration::from_millis(100), None).await;
    s.client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    s.backend.read_exact(&mut got).await.unwrap();
    // Then silence: the splice ends by itself, and both sides see it end.
    let totals = s.done.await.unwrap();
    assert!(totals.aborted);
    assert_eq!(totals.a_to_b, 4);
    let mut buf = [0u8; 8];
    assert!(matches!(s.client.read(&mut buf).await, Ok(0) | Err(_)));
    assert!(matches!(s.backend.read(&mut buf).await, Ok(0) | Err(_)));
}

#[tokio::test]
async fn a_passed_deadline_ends_a_connection_that_is_not_idle() {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
    let s = spliced(Duration::from_secs(3600), Some(deadline)).await;
    let totals = s.done.await.unwrap();
    assert!(totals.aborted, "cut off at the caller's deadline");
    assert!(tokio::time::Instant::now() >= deadline);
}

/// A QUIC stream between two endpoints on loopback (a self-signed server
/// certificate, no client certificate): its send half, its receive half, and
/// the connection keeping them open.
async fn quic_stream() -> (quinn::SendStream, quinn::RecvStream, quinn::Connection) {
    use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let server_tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(tls13)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key.into())
        .unwrap();
    let server_quic = QuicServerConfig::try_from(server_tls).unwrap();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client_tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(tls13)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client_quic = QuicClientConfig::try_from(client_tls).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_quic)));
    let connecting = client
        .connect(server.local_addr().unwrap(), "localhost")
        .unwrap();
    let (to_server, at_server) =
        tokio::join!(connecting, async { server.accept().await.unwrap().await });
    let (to_server, at_server) = (to_server.unwrap(), at_server.unwrap());
    let (mut send, _) = to_server.open_bi().await.unwrap();
    // A stream reaches the peer with its first bytes.
    send.write_all(b"!").await.unwrap();
    let (_, mut recv) = at_server.accept_bi().await.unwrap();
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await.unwrap();
    (send, recv, to_server)
}

#[tokio::test]
async fn a_quic_read_gathers_every_chunk_already_there_up_to_the_limit() {
    let (mut send, recv, _connection) = quic_stream().await;
    let sent: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    send.write_all(&sent).await.unwrap();
    send.finish().unwrap();
    // Once the peer acknowledged every byte, all of them wait in its stream.
    assert_eq!(send.stopped().await.unwrap(), None);
    let mut reader = super::Reader::Quic(recv);
    let (mut chunks, mut size, mut after) = (Vec::new(), 0, None);
    let (mut got, mut per_read) = (Vec::new(), Vec::new());
    loop {
        let n = reader
            .read_chunks(&mut chunks, &mut size, &mut after)
            .await
            .unwrap();
        assert_eq!(n, chunks.len());
        if n == 0 {
            break;
        }
        per_read.push(n);
        for c in chunks.drain(..) {
            got.extend_from_slice(&c);
        }
    }
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "the bytes arrive whole and in order");
    let total: usize = per_read.iter().sum();
    assert!(
        total > super::MAX_CHUNKS,
        "{total} chunks: the test needs more than one read's worth"
    );
    let (last, full) = per_read.split_last().unwrap();
    let short = full.iter().position(|&n| n != super::MAX_CHUNKS);
    assert!(
        short.is_none() && *last <= super::MAX_CHUNKS,
        "each read takes every chunk already there, up to {}: read {short:?} of {} took \
         fewer; the first reads took {:?}, the last {last}",
        super::MAX_CHUNKS,
        per_read.len(),
        &per_read[..per_read.len().min(8)],
    );
}
