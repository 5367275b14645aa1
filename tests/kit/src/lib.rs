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

/// Whether a log shows a call the apiserver refused (kube's error names the reason and the
/// code). Not a bare "403": timestamps hold those digits (`02:04:58.403420Z`).
pub fn forbidden_in(log: &str) -> bool {
    log.contains("Forbidden") || log.contains("is forbidden") || log.contains("code: 403")
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

/// `kubectl --kubeconfig KUBECONFIG ARGS…` with `stdin` piped in if given; its output.
/// Panics (naming the arguments and kubectl's error) when it fails.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or("").as_bytes()).expect("kubectl reads its input");
    }
    let out = child.wait_with_output().expect("kubectl ends");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real kube-apiserver (and etcd) from tests/testbed/kube.sh, stopped on drop.
#[derive(Debug)]
pub struct Apiserver {
    dir: PathBuf,
}

impl Apiserver {
    /// Starts one with its state, certificates and kubeconfig in `dir`, bound to `addr`
    /// (default 127.0.0.1). Panics if it does not become ready.
    pub fn start(dir: &Path, addr: Option<&str>) -> Apiserver {
        let mut cmd = Command::new(repo("tests/testbed/kube.sh"));
        cmd.arg("start").arg(dir);
        if let Some(a) = addr {
            cmd.arg(a);
        }
        let st = cmd.status().expect("tests/testbed/kube.sh runs");
        assert!(st.success(), "the kube testbed did not start (see its output above)");
        Apiserver { dir: dir.to_path_buf() }
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The bearer token of the testbed's plain user `name` (alice, bob or carol).
    pub fn user_token(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("user-{name}.token")))
            .expect("the testbed wrote the user's token")
            .trim()
            .to_string()
    }

    /// A kubeconfig that acts as `namespace`'s service account `name` (impersonation), so
    /// the RBAC of the manifests is what the process gets. Written to `out`.
    pub fn impersonating(&self, namespace: &str, name: &str, out: &Path) -> PathBuf {
        let sa = format!("system:serviceaccount:{namespace}:{name}");
        let text = std::fs::read_to_string(self.kubeconfig()).expect("the testbed wrote a kubeconfig").replace(
            "    token:",
            &format!(
                "    as: {sa}\n    as-groups: [system:serviceaccounts, system:serviceaccounts:{namespace}, system:authenticated]\n    token:"
            ),
        );
        std::fs::write(out, text).expect("the kubeconfig can be written");
        out.to_path_buf()
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = Command::new(repo("tests/testbed/kube.sh")).arg("stop").arg(&self.dir).status();
    }
}
