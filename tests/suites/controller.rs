//! The controller against a real kube-apiserver (v1.20.2 built from Debian's source package
//! by tests/testbed/kube.sh) and etcd. Each test starts its own apiserver and stops it on
//! drop. In CI a missing testbed fails the tests; elsewhere they are skipped, loudly.
#![allow(clippy::unwrap_used)]

use vipvisor_testkit as common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use vipvisor_store::Store;

const VIPVISOR: &str = env!("CARGO_BIN_EXE_vipvisor");
/// One apiserver at a time (each test has its own runtime; tokio's mutex works across them).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Testbed {
    client: Client,
    controllers: Vec<Child>,
    api: common::Apiserver,
    dir: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for c in &mut self.controllers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn testbed(tag: &str) -> Option<Testbed> {
    if common::skip(&format!("controller test {tag}"), common::kube_missing()) {
        return None;
    }
    let serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let api = common::Apiserver::start(dir.path(), None);
    let kc = kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = Client::try_from(config).unwrap();
    let tb = Testbed { client, controllers: Vec::new(), api, dir, _serial: serial };
    tb.namespace("vipvisor-system", &[]).await;
    Some(tb)
}

const POOLS: &str = r#"
pools:
  - name: web
    addresses: [192.0.2.0/26]
  - name: lab
    addresses: [198.51.100.0/28]
    auto_assign: false
  - name: tiny
    addresses: [203.0.113.0/31]
    namespaces: [tiny]
    priority: 1
"#;

impl Testbed {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
    /// Each replica's own store (an SQLite file is never shared between replicas).
    fn store_url(&self, identity: &str) -> String {
        format!("sqlite://{}", self.path(&format!("store-{identity}.db")).display())
    }
    fn kubeconfig(&self) -> PathBuf {
        self.api.kubeconfig()
    }
    async fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": labels}})).unwrap();
        let _ = api.create(&PostParams::default(), &ns).await;
    }
    /// Starts a controller; `extra` are more controller flags.
    fn controller(&mut self, identity: &str, kubeconfig: &Path, extra: &[&str]) -> usize {
        std::fs::write(self.path("pools.yaml"), POOLS).unwrap();
        let log = std::fs::File::create(self.path(&format!("{identity}.log"))).unwrap();
        let mut args = vec![
            "--store".to_string(),
            self.store_url(identity),
            "controller".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--pools".into(),
            self.path("pools.yaml").display().to_string(),
            "--identity".into(),
            identity.into(),
            "--lease-duration".into(),
            "3s".into(),
            "--lease-renew".into(),
            "500ms".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(VIPVISOR)
            .args(&args)
            .stdout(std::fs::File::create(self.path(&format!("{identity}.out"))).unwrap())
            .stderr(log)
            .env("VIPVISOR_LOG", "info")
            .spawn()
            .unwrap();
        self.controllers.push(child);
        self.controllers.len() - 1
    }
    fn log(&self, identity: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{identity}.log"))).unwrap_or_default()
    }
    fn kill(&mut self, i: usize) {
        let _ = self.controllers[i].kill(); // SIGKILL
        let _ = self.controllers[i].wait();
    }
    async fn wait_leading(&self, identity: &str) {
        wait(
            Duration::from_secs(20),
            || self.log(identity).contains("initial pass done"),
            &format!("{identity} to lead"),
        )
        .await;
    }
    fn services(&self, ns: &str) -> Api<Service> {
        Api::namespaced(self.client.clone(), ns)
    }
    async fn create(&self, ns: &str, name: &str, annotations: serde_json::Value, spec: serde_json::Value) {
        let mut s = serde_json::json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
        s.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": s
        }))
        .unwrap();
        self.services(ns).create(&PostParams::default(), &svc).await.unwrap();
    }
    async fn ips(&self, ns: &str, name: &str) -> Vec<String> {
        let s = self.services(ns).get(name).await.unwrap();
        s.status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .map(|i| i.into_iter().filter_map(|i| i.ip).collect())
            .unwrap_or_default()
    }
    async fn wait_ips(&self, ns: &str, name: &str) -> Vec<String> {
        let start = Instant::now();
        loop {
            let ips = self.ips(ns, name).await;
            if !ips.is_empty() {
                return ips;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{ns}/{name} got no address");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    async fn events(&self, ns: &str, name: &str) -> Vec<(String, String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let mut out: Vec<(String, String, String)> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        out.sort();
        out
    }
    async fn wait_event(&self, ns: &str, name: &str, reason: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some((_, _, note)) = self.events(ns, name).await.into_iter().find(|e| e.0 == reason) {
                return note;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{ns}/{name} got no {reason} event: {:?}",
                self.events(ns, name).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    /// What `identity`'s store holds.
    async fn allocations(&self, identity: &str) -> BTreeMap<String, Vec<String>> {
        let store = Store::open(&self.store_url(identity)).await.unwrap();
        let ipam = store.snapshot().await.unwrap();
        let out = ipam
            .allocations()
            .into_iter()
            .map(|a| (a.service.to_string(), a.addresses.iter().map(ToString::to_string).collect()))
            .collect();
        store.close().await;
        out
    }
}

async fn wait(limit: Duration, mut f: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn services_get_addresses_events_and_are_released() {
    let Some(mut tb) = testbed("a").await else { return };
    tb.namespace("tiny", &[]).await;
    let kc = tb.kubeconfig();
    // A viewer token in c1's own store, for the API it serves (`--serve`).
    let out = Command::new(VIPVISOR)
        .args(["--store", &tb.store_url("c1"), "-o", "json", "token", "create", "ui", "--role", "viewer"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["token"].as_str().unwrap().to_string();
    tb.controller("c1", &kc, &["--metrics-addr", "127.0.0.1:19481", "--serve", "127.0.0.1:19482"]);
    tb.wait_leading("c1").await;
    let none = serde_json::json!({});
    assert_eq!(http("127.0.0.1:19481", "/readyz"), "leading\n");
    assert_eq!(http("127.0.0.1:19481", "/healthz"), "ok\n");

    tb.create("default", "plain", none.clone(), none.clone()).await;
    let ip = tb.wait_ips("default", "plain").await;
    let api = Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {token}"), "http://127.0.0.1:19482/api/v1/allocations"])
        .output()
        .unwrap();
    let page: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap_or_default();
    assert!(
        page["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|a| a["service"] == "default/plain" && a["addresses"][0] == ip[0].as_str())),
        "the controller's API shows the cluster's allocation: {page}"
    );
    assert!(!tb.log("c1").contains(&token), "no token in the log");
    assert!(ip[0].starts_with("192.0.2."), "auto-assigned from web: {ip:?}");
    assert!(tb.wait_event("default", "plain", "IPAllocated").await.contains(&ip[0]));

    // MetalLB users keep their annotations.
    tb.create(
        "default",
        "pinned",
        serde_json::json!({"metallb.universe.tf/loadBalancerIPs": "192.0.2.40"}),
        none.clone(),
    )
    .await;
    assert_eq!(tb.wait_ips("default", "pinned").await, vec!["192.0.2.40"]);
    tb.create("default", "labbed", serde_json::json!({"metallb.io/address-pool": "lab"}), none.clone()).await;
    assert!(tb.wait_ips("default", "labbed").await[0].starts_with("198.51.100."), "address-pool picks the manual pool");
    tb.create("default", "spec-ip", none.clone(), serde_json::json!({"loadBalancerIP": "192.0.2.41"})).await;
    assert_eq!(tb.wait_ips("default", "spec-ip").await, vec!["192.0.2.41"]);

    // Sharing, and its refusal naming the other service.
    let udp = serde_json::json!({"ports": [{"port": 53, "protocol": "UDP"}]});
    let tcp = serde_json::json!({"ports": [{"port": 53, "protocol": "TCP"}]});
    tb.create("default", "dns-udp", serde_json::json!({"metallb.universe.tf/allow-shared-ip": "dns"}), udp.clone())
        .await;
    tb.create("default", "dns-tcp", serde_json::json!({"vipvisor.io/sharing-key": "dns"}), tcp).await;
    let a = tb.wait_ips("default", "dns-udp").await;
    assert_eq!(tb.wait_ips("default", "dns-tcp").await, a, "same key, other ports: one address");
    tb.create(
        "default",
        "dns-clash",
        serde_json::json!({"vipvisor.io/sharing-key": "dns", "vipvisor.io/addresses": a[0].as_str()}),
        udp,
    )
    .await;
    let note = tb.wait_event("default", "dns-clash", "AllocationFailed").await;
    assert!(note.contains("udp/53") && note.contains("default/dns-udp"), "{note}");

    // Exhaustion: an Event, not a crash loop. (Naming the pool makes it the only choice;
    // otherwise the next eligible pool would serve.)
    for n in ["t1", "t2", "t3"] {
        tb.create("tiny", n, serde_json::json!({"vipvisor.io/pool": "tiny"}), none.clone()).await;
    }
    let note = tb.wait_event("tiny", "t3", "AllocationFailed").await;
    assert!(note.contains("pool exhausted"), "{note}");
    // The controller's API says why t3 waits, per pool (its Service cache, explained).
    let api = Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {token}"), "http://127.0.0.1:19482/api/v1/pending"])
        .output()
        .unwrap();
    let pending: serde_json::Value = serde_json::from_slice(&api.stdout).unwrap_or_default();
    let t3 = pending.as_array().and_then(|p| p.iter().find(|p| p["service"] == "tiny/t3")).cloned().unwrap_or_default();
    assert_eq!(t3["code"], "pool_exhausted", "why pending: {pending}");
    assert!(
        t3["pools"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["pool"] == "tiny" && r["reason"].as_str().unwrap_or("").starts_with("exhausted"))),
        "the reason names the pool: {pending}"
    );
    assert!(
        !pending.as_array().unwrap().iter().any(|p| p["service"] == "tiny/t1" || p["service"] == "default/plain"),
        "Services with an address are not pending: {pending}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failures = tb.events("tiny", "t3").await.into_iter().filter(|e| e.0 == "AllocationFailed").count();
    assert_eq!(failures, 1, "the failure is reported once, not in a loop");
    assert!(tb.controllers[0].try_wait().unwrap().is_none(), "the controller is still running");

    // A malformed annotation warns, naming it; the Service is served anyway.
    tb.create(
        "default",
        "typo",
        serde_json::json!({"vipvisor.io/addresses": "192.0.2.999", "vipvisor.io/colour": "red"}),
        none.clone(),
    )
    .await;
    assert!(!tb.wait_ips("default", "typo").await.is_empty());
    let note = tb.wait_event("default", "typo", "InvalidAnnotation").await;
    assert!(
        note.contains("vipvisor.io/addresses") && note.contains("192.0.2.999"),
        "the malformed value is named: {note}"
    );
    assert!(note.contains("vipvisor.io/colour"), "the unknown annotation is named: {note}");

    // A changed pools file is applied and waiting Services are served.
    std::fs::write(tb.path("pools.yaml"), POOLS.replace("203.0.113.0/31", "203.0.113.0/30")).unwrap();
    let t3 = tb.wait_ips("tiny", "t3").await;
    assert!(t3[0].starts_with("203.0.113."), "t3 is served from the grown pool: {t3:?}");

    // Deletion and type change release.
    let allocs = tb.allocations("c1").await;
    assert_eq!(allocs["default/plain"], ip);
    tb.services("default").delete("plain", &DeleteParams::default()).await.unwrap();
    let patch = serde_json::json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP", "nodePort": null}]}});
    tb.services("default").patch("pinned", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    tb.wait_event("default", "pinned", "IPReleased").await;
    let start = Instant::now();
    loop {
        let allocs = tb.allocations("c1").await;
        if !allocs.contains_key("default/plain") && !allocs.contains_key("default/pinned") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "deleted/changed services keep addresses: {allocs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tb.ips("default", "pinned").await.is_empty(),
        "a Service that is no longer a LoadBalancer loses its status"
    );

    let metrics = http("127.0.0.1:19481", "/metrics");
    for m in [
        "vipvisor_controller_reconciles_total",
        "vipvisor_controller_reconcile_failures_total{reason=\"allocation\"}",
        "vipvisor_controller_allocation_duration_seconds_bucket",
        "vipvisor_controller_pool_addresses{pool=\"web\",family=\"ipv4\",state=\"used\"}",
        "vipvisor_controller_leader 1",
    ] {
        assert!(metrics.contains(m), "/metrics must have {m}:\n{metrics}");
    }
}

/// A plain HTTP GET (the controller's metrics endpoint), body only.
fn http(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "current_thread")]
async fn restart_with_sigkill_renumbers_nothing() {
    let Some(mut tb) = testbed("b").await else { return };
    let kc = tb.kubeconfig();
    let c = tb.controller("c1", &kc, &[]);
    tb.wait_leading("c1").await;
    for i in 0..50 {
        tb.create("default", &format!("s{i}"), serde_json::json!({}), serde_json::json!({})).await;
    }
    let mut before = BTreeMap::new();
    for i in 0..50 {
        before.insert(i, tb.wait_ips("default", &format!("s{i}")).await);
    }
    tb.kill(c);
    // The store is lost too in the worst case: a fresh store must adopt from the statuses.
    std::fs::remove_file(tb.path("store-c1.db")).unwrap();
    let _ = std::fs::remove_file(tb.path("store-c1.db-wal"));
    let _ = std::fs::remove_file(tb.path("store-c1.db-shm"));
    // A service created while no controller runs is served after the restart, but never
    // with an address the others had.
    tb.create("default", "late", serde_json::json!({}), serde_json::json!({})).await;
    tb.controller("c2", &kc, &[]);
    tb.wait_leading("c2").await;
    let late = tb.wait_ips("default", "late").await;
    for i in 0..50 {
        let now = tb.ips("default", &format!("s{i}")).await;
        assert_eq!(now, before[&i], "s{i} must keep its address across a SIGKILL restart");
        assert_ne!(now, late, "the late service must not get s{i}'s address");
    }
    assert_eq!(tb.allocations("c2").await.len(), 51, "all 50 were adopted into the new store, plus the late one");
}

#[tokio::test(flavor = "current_thread")]
async fn standby_takes_over_and_no_address_is_given_twice() {
    let Some(mut tb) = testbed("c").await else { return };
    let kc = tb.kubeconfig();
    let first = tb.controller("c1", &kc, &[]);
    tb.wait_leading("c1").await;
    tb.controller("c2", &kc, &[]);
    wait(Duration::from_secs(10), || tb.log("c2").contains("caches synced"), "the standby to sync").await;
    let mut killed_at = None;
    for i in 0..40 {
        if i == 15 {
            tb.kill(first);
            killed_at = Some(Instant::now());
        }
        tb.create("default", &format!("h{i}"), serde_json::json!({}), serde_json::json!({})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = BTreeMap::new();
    for i in 0..40 {
        let ip = tb.wait_ips("default", &format!("h{i}")).await;
        if let Some(prev) = seen.insert(ip.clone(), i) {
            panic!("h{prev} and h{i} both got {ip:?}");
        }
    }
    let took = killed_at.unwrap().elapsed();
    // The pass writes the statuses first and logs that it is done after its sweep.
    wait(Duration::from_secs(10), || tb.log("c2").contains("initial pass done"), "the standby to take over").await;
    let lease: Api<Lease> = Api::namespaced(tb.client.clone(), "vipvisor-system");
    let l = lease.get("vipvisor-controller").await.unwrap();
    assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("c2"));
    eprintln!("standby served everything {took:?} after the holder was killed");
}

/// Each replica has its own store. A standby writes nothing (before, every replica applied
/// the pools file at start and on change, leader or not); the new leader rebuilds from the
/// cluster and takes the quarantine over from the Lease, so an address released just
/// before the failover is still kept for its last holder.
#[tokio::test(flavor = "current_thread")]
async fn standbys_write_nothing_and_quarantine_survives_a_leader_change() {
    let Some(mut tb) = testbed("e").await else { return };
    tb.namespace("tiny", &[]).await;
    let kc = tb.kubeconfig();
    let first = tb.controller("c1", &kc, &[]);
    tb.wait_leading("c1").await;
    tb.controller("c2", &kc, &[]);
    wait(Duration::from_secs(10), || tb.log("c2").contains("caches synced"), "the standby to sync").await;
    // Touch the pools file: only the leader may apply it.
    std::fs::write(tb.path("pools.yaml"), format!("{POOLS}\n# touched\n")).unwrap();
    let none = serde_json::json!({});
    tb.create("tiny", "q1", none.clone(), none.clone()).await;
    let a = tb.wait_ips("tiny", "q1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let store = Store::open(&tb.store_url("c2")).await.unwrap();
        let ipam = store.snapshot().await.unwrap();
        assert_eq!(ipam.pools().count(), 0, "the standby applied no pools file");
        assert!(ipam.allocations().is_empty(), "the standby allocated nothing");
        assert!(store.events(None, None).await.unwrap().is_empty(), "the standby's store has no change at all");
        store.close().await;
    }
    // Release q1's address into quarantine, then lose the leader.
    tb.services("tiny").delete("q1", &DeleteParams::default()).await.unwrap();
    wait(Duration::from_secs(10), || tb.log("c1").contains("released (service deleted)"), "the release").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // one renewal carries the quarantine
    tb.kill(first);
    tb.wait_leading("c2").await;
    assert!(tb.log("c2").contains("took the quarantine over from the Lease entries=1"), "{}", tb.log("c2"));
    tb.create("tiny", "q2", none.clone(), none.clone()).await;
    let b = tb.wait_ips("tiny", "q2").await;
    assert_ne!(a, b, "q1's quarantined address must not go to q2 after the failover");
    tb.create("tiny", "q1", none.clone(), none).await;
    assert_eq!(tb.wait_ips("tiny", "q1").await, a, "q1 gets its address back within the quarantine");
    assert_eq!(tb.allocations("c2").await.len(), 2, "the new leader's store holds what the cluster shows");
}

#[tokio::test(flavor = "current_thread")]
async fn manifests_apply_and_rbac_is_least_privilege() {
    let Some(mut tb) = testbed("d").await else { return };
    let kc = tb.kubeconfig();
    let deploy = common::repo("deploy");
    let kubectl = |args: &[&str], stdin: Option<&str>| {
        common::kubectl(&kc, args, stdin);
    };
    for f in ["namespace.yaml", "crd.yaml", "rbac.yaml", "controller.yaml"] {
        kubectl(&["apply", "-f", deploy.join(f).to_str().unwrap()], None);
    }
    kubectl(&["wait", "--for", "condition=established", "crd/servicel2statuses.vipvisor.io", "--timeout=30s"], None);
    let sa = "system:serviceaccount:vipvisor-system:vipvisor-controller";
    let can = |args: &[&str]| -> bool {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["auth", "can-i", "--as", sa])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for allowed in [
        &["watch", "services", "--all-namespaces"][..],
        &["list", "services", "--all-namespaces"],
        &["patch", "services", "--subresource=status", "-n", "default"],
        // The vipvisor.io/virtual-macs annotation (pools with `mac: virtual`).
        &["patch", "services", "-n", "default"],
        &["list", "namespaces"],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["create", "leases.coordination.k8s.io", "-n", "vipvisor-system"],
        &["update", "leases.coordination.k8s.io/vipvisor-controller", "-n", "vipvisor-system"],
        &["watch", "servicel2statuses.vipvisor.io", "-n", "vipvisor-speaker"],
        &["list", "nodes"],
        &["watch", "nodes"],
        &["create", "tokenreviews.authentication.k8s.io"],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
    ] {
        assert!(can(allowed), "the controller must be allowed to {allowed:?}");
    }
    for denied in [
        &["get", "secrets", "--all-namespaces"][..],
        &["get", "secrets", "-n", "vipvisor-system"],
        &["delete", "services", "-n", "default"],
        &["update", "services", "-n", "default"],
        &["create", "services", "-n", "default"],
        &["update", "leases.coordination.k8s.io/other", "-n", "vipvisor-system"],
        &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["create", "pods", "-n", "default"],
        &["patch", "servicel2statuses.vipvisor.io", "-n", "vipvisor-speaker"],
        &["patch", "nodes"],
        &["get", "nodes/proxy"],
    ] {
        assert!(!can(denied), "the controller must not be allowed to {denied:?}");
    }
    // And the RBAC is enough: run the controller as the service account (impersonated).
    let sa_kc = tb.api.impersonating("vipvisor-system", "vipvisor-controller", &tb.path("sa-kubeconfig"));
    // Its API takes Kubernetes tokens: alice may read, bob may write, carol nothing.
    kubectl(&["create", "clusterrolebinding", "alice-views", "--clusterrole=vipvisor-viewer", "--user=alice"], None);
    kubectl(&["create", "clusterrolebinding", "bob-admins", "--clusterrole=vipvisor-admin", "--user=bob"], None);
    let (alice, bob, carol) = (tb.api.user_token("alice"), tb.api.user_token("bob"), tb.api.user_token("carol"));
    let own = Command::new(VIPVISOR)
        .args(["--store", &tb.store_url("sa"), "-o", "json", "token", "create", "ui", "--role", "admin"])
        .output()
        .unwrap();
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    let own = serde_json::from_slice::<serde_json::Value>(&own.stdout).unwrap()["token"].as_str().unwrap().to_string();
    let call = |method: &str, path: &str, token: Option<&str>| -> (u16, serde_json::Value) {
        let mut args = vec![
            "-s".to_string(),
            "-o".into(),
            "-".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            "-X".into(),
            method.into(),
        ];
        if let Some(t) = token {
            args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
        }
        if method != "GET" {
            args.extend([
                "-H".into(),
                "Content-Type: application/json".into(),
                "-d".into(),
                r#"{"service":"default/x"}"#.into(),
            ]);
        }
        args.push(format!("http://127.0.0.1:19483/api/v1/{path}"));
        let out = Command::new("curl").args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or_default())
    };
    let api = |path: &str| call("GET", path, Some(alice.as_str())).1;
    tb.controller(
        "sa",
        &sa_kc,
        &["--serve", "127.0.0.1:19483", "--serve-auth", "kubernetes", "--virtual-mac-group", "7"],
    );
    tb.wait_leading("sa").await;
    tb.create("default", "rbac", serde_json::json!({}), serde_json::json!({})).await;
    assert!(!tb.wait_ips("default", "rbac").await.is_empty(), "the service account can do the whole job");
    tb.wait_event("default", "rbac", "IPAllocated").await;
    assert!(!common::forbidden_in(&tb.log("sa")), "no forbidden calls: {}", tb.log("sa"));

    // The speakers' reports (ServiceL2Status, written here as a speaker would) become the
    // Service's `vipvisor.io/Announced` condition; the newest claim of a VIP wins.
    let ip = tb.ips("default", "rbac").await[0].clone();
    let report = |node: &str, iface: &str, since: &str| {
        serde_json::json!({"apiVersion": "vipvisor.io/v1alpha1", "kind": "ServiceL2Status",
            "metadata": {"name": node, "namespace": "vipvisor-speaker"},
            "status": {"node": node, "announcing": [{"service": "default/rbac", "vip": ip, "interface": iface, "since": since}]}})
        .to_string()
    };
    let condition = || async {
        let s = tb.services("default").get("rbac").await.unwrap();
        s.status
            .and_then(|s| s.conditions)
            .and_then(|c| c.into_iter().find(|c| c.type_ == "vipvisor.io/Announced"))
            .map(|c| (c.status, c.message))
    };
    let wait_condition = |want: String| async move {
        let start = Instant::now();
        loop {
            let got = condition().await;
            if got.as_ref().is_some_and(|(s, m)| s == "True" && m.contains(&want)) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "expected an Announced condition naming {want:?}, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    kubectl(&["apply", "-f", "-"], Some(&report("n1", "eth0", "2026-12-02T10:00:00Z")));
    wait_condition(format!("{ip} from node n1 on eth0")).await;
    kubectl(&["apply", "-f", "-"], Some(&report("n2", "eth1", "2026-12-02T10:00:05Z")));
    wait_condition(format!("{ip} from node n2 on eth1")).await;
    kubectl(&["delete", "servicel2status", "n2", "-n", "vipvisor-speaker"], None);
    wait_condition(format!("{ip} from node n1 on eth0")).await;
    // The same reports are the owners read model, kept in the controller's store: n1 owns
    // the VIP again, after n1 → n2 → n1.
    let start = Instant::now();
    loop {
        let h = api("ownership");
        let path: Vec<(String, String)> = h["failovers"]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|f| (f["from"].as_str().unwrap_or("").into(), f["to"].as_str().unwrap_or("").into()))
                    .collect()
            })
            .unwrap_or_default();
        let owners = api("owners");
        let now =
            owners.as_array().and_then(|o| o.iter().find(|o| o["address"] == ip.as_str())).cloned().unwrap_or_default();
        if path == [("n1".to_string(), "n2".to_string()), ("n2".to_string(), "n1".to_string())]
            && now["node"] == "n1"
            && now["interface"] == "eth0"
            && now["source"] == "kubernetes"
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "owners from the reports: {owners} {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!common::forbidden_in(&tb.log("sa")), "no forbidden calls: {}", tb.log("sa"));

    // Virtual-MAC mode. The pool turns to `mac: virtual` (the pools file): the controller,
    // as the service account, marks the Service with its address's MAC in the cluster's
    // group (--virtual-mac-group 7); the operator's own MAC wins; a report with the MAC
    // shows in the condition; back to `mac: node`, the mark goes.
    let note = || async {
        let s = tb.services("default").get("rbac").await.unwrap();
        s.metadata.annotations.and_then(|a| a.get("vipvisor.io/virtual-macs").cloned())
    };
    let wait_note = |want: Option<String>| async move {
        let start = Instant::now();
        loop {
            let got = note().await;
            if got == want {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "expected the virtual-MAC note {want:?}, got {got:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let vmac = vipvisor_l2::vmac::derive(ip.parse().unwrap(), 7).to_string();
    assert!(vmac.starts_with("42:07:"), "{vmac}");
    let virtual_pools =
        POOLS.replace("    addresses: [192.0.2.0/26]\n", "    addresses: [192.0.2.0/26]\n    mac: virtual\n");
    assert_ne!(virtual_pools, POOLS);
    std::fs::write(tb.path("pools.yaml"), &virtual_pools).unwrap();
    wait_note(Some(format!("{ip}={vmac}"))).await;
    let with_mac = serde_json::json!({"apiVersion": "vipvisor.io/v1alpha1", "kind": "ServiceL2Status",
        "metadata": {"name": "n1", "namespace": "vipvisor-speaker"},
        "status": {"node": "n1", "announcing": [{"service": "default/rbac", "vip": ip, "interface": "eth0",
                   "since": "2026-12-02T10:00:09Z", "mac": vmac}]}});
    kubectl(&["apply", "-f", "-"], Some(&with_mac.to_string()));
    wait_condition(format!("{ip} from node n1 on eth0 with virtual MAC {vmac}")).await;
    let mine = serde_json::json!({"metadata": {"annotations": {"vipvisor.io/virtual-mac": format!("{ip}=02:aa:00:00:00:07")}}});
    tb.services("default").patch("rbac", &PatchParams::default(), &Patch::Merge(&mine)).await.unwrap();
    wait_note(Some(format!("{ip}=02:aa:00:00:00:07"))).await;
    std::fs::write(tb.path("pools.yaml"), POOLS).unwrap();
    wait_note(None).await;
    assert!(!common::forbidden_in(&tb.log("sa")), "no forbidden calls: {}", tb.log("sa"));

    // Kubernetes tokens, by TokenReview and SubjectAccessReview (the manifests' RBAC lets
    // the controller ask): roles from the ClusterRoles, names from the users.
    let who = |t: &str| call("GET", "whoami", Some(t));
    assert_eq!(who(&alice), (200, serde_json::json!({"name": "k8s:alice", "role": "viewer"})));
    assert_eq!(who(&bob), (200, serde_json::json!({"name": "k8s:bob", "role": "admin"})));
    let (st, body) = who(&carol);
    assert_eq!((st, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("vipvisor-viewer"), "{body}");
    for t in [Some("not-a-token"), Some(own.as_str()), None] {
        let (st, body) = call("GET", "whoami", t);
        assert_eq!((st, body["code"].as_str()), (401, Some("unauthenticated")), "{t:?}: {body}");
    }
    let (st, body) = call("POST", "explain", Some(alice.as_str()));
    assert_eq!((st, body["code"].as_str()), (403, Some("forbidden")), "a viewer writing: {body}");
    let (st, body) = call("POST", "explain", Some(bob.as_str()));
    assert_eq!((st, body["service"].as_str()), (200, Some("default/x")), "{body}");
    let out = std::fs::read_to_string(tb.path("sa.out")).unwrap_or_default();
    assert!(!out.contains("log in at"), "no login code when Kubernetes decides: {out}");
    let log = tb.log("sa");
    for t in [&alice, &bob, &carol] {
        assert!(!log.contains(t.as_str()), "no token in the log");
    }
}
