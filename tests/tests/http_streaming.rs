//! Large HTTP bodies stream through the mesh with bounded memory: a 64 MiB upload
//! and a 64 MiB download through an HTTP listener, a tunnel and the serving node,
//! with the whole process's peak resident memory checked. Alone in its file (its
//! own process), so no other test's allocations are counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http_body_util::BodyExt;
use shoal_tests::cluster::Cluster;
use shoal_tests::web::{WebApp, pattern_body};
use shoal_tests::{Check, NodeSpec, request};
use tokio::net::TcpStream;

const SIZE: u64 = 64 * 1024 * 1024;
/// Peak memory may grow by at most this much while 64 MiB pass each way: the
/// flow-control windows and buffers, not the bodies.
const BOUND: u64 = 40 * 1024 * 1024;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Resets the peak resident size to the current one (Linux `clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_up_and_down_with_bounded_memory() {
    let app = WebApp::start("app-a").await;
    let mesh = Cluster::of([
        NodeSpec::new("a").service("web", app.addr(), Check::Http),
        NodeSpec::new("c").http_listener("web", Some("web")),
    ])
    .start()
    .await;
    mesh.wait_healthy("c", "web", 1).await;
    let listener = mesh.client("c", "web");

    // Warm up: connections, pools and buffers exist before the baseline.
    let warm = shoal_tests::get(listener, "files.example", "/download/1048576").await;
    assert_eq!(warm.status, 200);
    let baseline = status_kib("VmRSS:") * 1024;
    let peak_resettable = reset_peak();

    // Upload: the client produces the body as it goes; the backend counts it.
    let stream = TcpStream::connect(listener).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let upload = request("POST", "files.example", "/upload")
        .header("content-length", SIZE.to_string())
        .body(pattern_body(SIZE))
        .unwrap();
    let resp = sender.send_request(upload).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), SIZE.to_string());

    // Download: counted frame by frame, never held whole.
    let stream = TcpStream::connect(listener).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            request("GET", "files.example", &format!("/download/{SIZE}"))
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            // The pattern: byte o of the body is (o mod 64 KiB) mod 251. Sampled.
            for (i, &b) in data.iter().enumerate().step_by(997) {
                let o = received + i as u64;
                assert_eq!(u64::from(b), (o % 65536) % 251, "byte {o} is wrong");
            }
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);

    let peak = if peak_resettable {
        status_kib("VmHWM:") * 1024
    } else {
        status_kib("VmRSS:") * 1024
    };
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "baseline {} MiB, peak {} MiB, growth {} MiB (bound {} MiB)",
        baseline >> 20,
        peak >> 20,
        growth >> 20,
        BOUND >> 20
    );
    assert!(
        growth < BOUND,
        "peak memory grew by {} MiB while 64 MiB passed each way: bodies are being buffered",
        growth >> 20
    );
}
