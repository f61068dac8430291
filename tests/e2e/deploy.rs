//! deploy/: the sample configuration loads and passes the server's own
//! check, the systemd unit verifies, the alert rules pass promtool, and
//! every metric the alerts and the Grafana dashboard name is one the bus
//! exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use arqon_config::Config;
use arqon_e2e::{TestServer, http, test_config};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// `tool`'s path, or `None` (with a notice) when it is missing outside CI;
/// under `CI=true` a missing tool fails the test (scripts/test.sh installs it).
fn tool(name: &str, package: &str) -> Option<&'static str> {
    let path: &'static str = match name {
        "systemd-analyze" => "/usr/bin/systemd-analyze",
        _ => "/usr/bin/promtool",
    };
    if Path::new(path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").map_or(true, |ci| ci != "true"),
        "{name} is required in CI (apt-get install {package})"
    );
    eprintln!("SKIPPED: {name} not found (apt-get install {package})");
    None
}

/// A `Key=value` of the systemd unit.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit sets no {key}"))
        .to_owned()
}

#[test]
fn the_sample_config_loads_and_fits_the_unit() {
    let config = Config::load(Some(&deploy("arqonbus.toml")), Vec::new()).expect("deploy/arqonbus.toml loads");
    assert_eq!(config.server.host, "0.0.0.0", "the sample listens on every interface");
    let unit = read("arqonbus.service");
    let stop_s: u64 = unit_value(&unit, "TimeoutStopSec").parse().unwrap();
    assert!(stop_s * 1000 > config.server.shutdown_grace_ms, "TimeoutStopSec must outlast shutdown_grace_ms");
    let nofile: u64 = unit_value(&unit, "LimitNOFILE").parse().unwrap();
    assert!(nofile > config.server.max_connections as u64, "LimitNOFILE must exceed max_connections");
}

#[test]
fn the_systemd_unit_verifies() {
    let Some(analyze) = tool("systemd-analyze", "systemd") else { return };
    // verify wants the executables to exist: the binary is not installed here.
    let unit = read("arqonbus.service").replace("/usr/local/bin/arqonbus", "/bin/true");
    let dir = std::env::temp_dir().join(format!("arqon-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("arqonbus.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

#[test]
fn the_alert_rules_pass_promtool() {
    let Some(promtool) = tool("promtool", "prometheus") else { return };
    let output = Command::new(promtool).args(["check", "rules"]).arg(deploy("alerts.yml")).output().unwrap();
    assert!(
        output.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `arqon_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("arqon_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

async fn exported(server: &TestServer) -> BTreeSet<String> {
    let (status, body) = http(server.monitoring.expect("monitoring on"), "GET", "/metrics").await;
    assert_eq!(status, 200);
    body.lines().filter(|line| !line.starts_with('#')).flat_map(metric_names).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_alerts_and_the_dashboard_is_exported() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("grafana-dashboard.json")).expect("valid JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| !p.is_empty()));
    let mut named = metric_names(&read("alerts.yml"));
    named.extend(metric_names(&read("grafana-dashboard.json")));
    assert!(named.len() > 10, "{named:?}");

    let single = TestServer::start_with(test_config()).await;
    let mut have = exported(&single).await;
    // The cluster's own series exist only on a cluster node (Redis needed).
    let mut cluster_checked = false;
    #[cfg(feature = "redis")]
    if arqon_e2e::redis::redis_available("every_metric_in_the_alerts_and_the_dashboard_is_exported") {
        let redis = arqon_e2e::redis::RedisProcess::start();
        let node = TestServer::start_with(crate::cluster::node_config(&redis, "node-0")).await;
        have.extend(exported(&node).await);
        cluster_checked = true;
    }
    let missing: Vec<_> = named
        .iter()
        .filter(|name| !have.contains(*name))
        .filter(|name| cluster_checked || !name.starts_with("arqon_cluster_"))
        .collect();
    assert!(missing.is_empty(), "named in deploy/ but not exported: {missing:?}\nexported: {have:?}");
}
