//! The admin dashboard as an operator sees it: a real headless Chromium,
//! driven over the DevTools protocol, opens a calling node's page while
//! traffic flows through a three-node mesh, and reads what is on screen —
//! every member, the service's request rate, success rate and p99 — then sees
//! a killed member turn dead.
//!
//! Chromium must be installed (`.ci/run` installs it). Without it the test
//! says so and is skipped — except under CI (`CI` set), where it fails.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::Page;
use futures::StreamExt;
use shoal_tests::cluster::Cluster;
use shoal_tests::{eventually, get};

/// The Chromium executable on `PATH`, if any.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// The text of the first element matching `selector` on `page` (empty if none).
async fn text(page: &Page, selector: &str) -> String {
    let script = format!(
        "(() => {{ const e = document.querySelector({}); return e ? e.textContent.trim() : ''; }})()",
        serde_json::to_string(selector).unwrap()
    );
    match page.evaluate(script).await {
        Ok(v) => v.into_value::<String>().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// A number shown as `12.5`, `99.0%` or `1.23 ms`.
fn shown_number(s: &str) -> Option<f64> {
    s.trim_end_matches(" ms").trim_end_matches('%').parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_members_golden_metrics_and_a_death_in_a_real_browser() {
    let Some(exe) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs it)"
        );
        eprintln!("SKIPPED: no Chromium on PATH (apt-get install chromium)");
        return;
    };
    let (_apps, mesh) = Cluster::web_pair(|s| s).await;
    let mut mesh = mesh.start().await;
    mesh.wait_healthy("c", "web", 2).await;
    let listener = mesh.client("c", "web");
    let traffic = tokio::spawn(async move {
        loop {
            get(listener, "web", "/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let profile = tempfile::tempdir().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(exe)
        .no_sandbox()
        .user_data_dir(profile.path())
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config).await.unwrap();
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser
        .new_page(format!("http://{}/", mesh["c"].admin()))
        .await
        .unwrap();

    eventually("the page lists every member", || async {
        let mut all = true;
        for name in ["a", "b", "c"] {
            let state = text(&page, &format!("tr[data-member=\"{name}\"] td.state .word")).await;
            all &= state == "alive";
        }
        all
    })
    .await;
    let row = "#services tr[data-service=\"web\"]";
    eventually(
        "web shows a request rate, a success rate and a p99",
        || async {
            let rps = shown_number(&text(&page, &format!("{row} td.rps")).await);
            let success = text(&page, &format!("{row} td.success")).await;
            let p99 = text(&page, &format!("{row} td.p99")).await;
            rps.is_some_and(|r| r > 0.0)
                && success == "100.0%"
                && p99.ends_with(" ms")
                && shown_number(&p99).is_some_and(|ms| ms > 0.0)
        },
    )
    .await;
    let edge = text(&page, "#edges tr[data-service=\"web\"] td").await;
    assert!(
        edge.starts_with("c → web"),
        "the edge names the caller: {edge}"
    );

    let _dead = mesh.kill("b").await;
    eventually("the killed member turns dead on the page", || async {
        text(&page, "tr[data-member=\"b\"] td.state .word").await == "dead"
    })
    .await;

    traffic.abort();
    browser.close().await.unwrap();
    browser.wait().await.unwrap();
    events.abort();
    mesh.stop().await;
}
