//! Helpers shared by the suites that need root, the netns lab or the kube testbed: the
//! skip-or-fail policy (in CI a missing component fails the test; elsewhere the test says
//! loudly that it is skipped and why), requirement checks, and polling.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A path in the repository.
pub fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

fn sh_ok(script: &str) -> bool {
    Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Why the lab cannot run: not root, or one of `tools` is not installed.
pub fn lab_missing(tools: &[&str]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not running as root (network namespaces and raw sockets need it)".into());
    }
    tools
        .iter()
        .find(|t| !sh_ok(&format!("command -v {t}")))
        .map(|t| format!("{t} is not installed (tests/run installs it)"))
}

/// Why the kube testbed cannot run (tests/testbed/kube.sh builds and caches it).
pub fn kube_missing() -> Option<String> {
    let ok = sh_ok(
        "ls /var/tmp/vipvisor-kube/*/kube-apiserver && command -v etcd && command -v kubectl && command -v openssl && command -v curl",
    );
    (!ok).then(|| "the kube testbed is not built (run `tests/testbed/kube.sh build`, as tests/run does)".to_string())
}

/// `true` if `what` must be skipped because of `why`; in CI that is a failure instead.
pub fn skip(what: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return false };
    if std::env::var_os("CI").is_some() {
        panic!("{what} cannot run in CI: {why}");
    }
    eprintln!("SKIPPED {what}: {why}");
    true
}

/// Polls `f` every 20 ms until it holds; fails the test after `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The metrics text of the speaker serving on 127.0.0.1:9472 inside network namespace `ns`
/// (empty if it does not answer).
pub fn speaker_metrics(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9472/metrics', timeout=2).read().decode())")
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}
