//! Controller benchmarks against the real testbed apiserver (issue #4):
//! 1. Service created → status written, from the client side (a watch), 200 Services one
//!    after another: p50 and p99 (targets 50 ms / 200 ms);
//! 2. controller start with 10,000 LoadBalancer Services that already have addresses →
//!    ready and idle (targets < 5 s), with a fresh store (adopting all of them) and with the
//!    store kept; RSS at that point.
//!
//! Run: `cargo bench -p vipvisor --bench controller` (needs `tests/testbed/kube.sh
//! build`; BENCH_SERVICES=N changes the 10,000).
#![allow(clippy::unwrap_used)]

mod common;
use common::pct;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;

const VIPVISOR: &str = env!("CARGO_BIN_EXE_vipvisor");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/testbed/kube.sh")
}

fn svc(ns: &str, name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    }))
    .unwrap()
}

struct Ctl {
    child: Child,
    log: PathBuf,
}

fn start_controller(dir: &Path, id: &str) -> Ctl {
    let log = dir.join(format!("{id}.log"));
    let child = Command::new(VIPVISOR)
        .args(["--store", &format!("sqlite://{}/store.db", dir.display()), "controller", "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .arg("--pools")
        .arg(dir.join("pools.yaml"))
        .args(["--identity", id])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Ctl { child, log }
}

fn wait_ready(c: &Ctl, since: Instant) -> Duration {
    loop {
        if std::fs::read_to_string(&c.log).unwrap_or_default().contains("initial pass done") {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(120), "the controller did not get ready");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM, as a Deployment's rolling restart does: the controller vacates its Lease.
fn stop(c: &mut Ctl) {
    let _ = Command::new("kill").args(["-TERM", &c.child.id().to_string()]).status();
    let _ = c.child.wait();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !Command::new("sh")
        .args(["-c", "ls /var/tmp/vipvisor-kube/*/kube-apiserver"])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        eprintln!("SKIPPED controller benchmark: run tests/testbed/kube.sh build first");
        return;
    }
    let n: usize = std::env::var("BENCH_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    assert!(Command::new(script()).arg("start").arg(&d).status().unwrap().success());
    std::fs::write(
        d.join("pools.yaml"),
        "pools:\n  - name: v4\n    addresses: [192.0.2.0/24, 198.51.100.0/24]\n  - name: v6\n    addresses: [\"2001:db8:b::/112\"]\n    auto_assign: false\n",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(run(&d, n))));
    let _ = Command::new(script()).arg("stop").arg(&d).status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

async fn run(d: &Path, n: usize) {
    let kc = kube::config::Kubeconfig::read_from(d.join("kubeconfig")).unwrap();
    let client =
        Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for ns in ["vipvisor-system", "lat", "big"] {
        let o: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        nsapi.create(&PostParams::default(), &o).await.unwrap();
    }

    // 1. Latency, client side, one Service after another.
    let mut c1 = start_controller(d, "c1");
    wait_ready(&c1, Instant::now());
    let api: Api<Service> = Api::namespaced(client.clone(), "lat");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let w = watcher(api.clone(), watcher::Config::default());
    let watch_task = tokio::spawn(async move {
        let mut s = std::pin::pin!(w.applied_objects());
        while let Ok(Some(svc)) = s.try_next().await {
            let has_ip =
                svc.status.and_then(|s| s.load_balancer).and_then(|l| l.ingress).is_some_and(|i| !i.is_empty());
            if has_ip {
                let _ = tx.send((svc.metadata.name.unwrap_or_default(), Instant::now()));
            }
        }
    });
    let mut lat = Vec::new();
    for i in 0..200 {
        let name = format!("l{i}");
        let t0 = Instant::now();
        api.create(&PostParams::default(), &svc("lat", &name)).await.unwrap();
        loop {
            let (got, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
            if got == name {
                lat.push(at - t0);
                break;
            }
        }
    }
    watch_task.abort();
    lat.sort();
    println!(
        "create_to_status: 200 Services, client side: p50 {:.1?}, p99 {:.1?}, max {:.1?} (targets p50 < 50 ms, p99 < 200 ms)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1]
    );
    stop(&mut c1);

    // 2. n Services that already have addresses (written here, as a previous controller would).
    let big: Api<Service> = Api::namespaced(client.clone(), "big");
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let big = big.clone();
            async move {
                let name = format!("b{i}");
                big.create(&PostParams::default(), &svc("big", &name)).await.unwrap();
                let ip = format!("2001:db8:b::{:x}", i + 1);
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
                big.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    eprintln!("created {n} Services with addresses in {:.1?}", t.elapsed());

    for (label, fresh) in [("fresh store (adopts every address)", true), ("store kept (plain restart)", false)] {
        if fresh {
            for f in ["store.db", "store.db-wal", "store.db-shm"] {
                let _ = std::fs::remove_file(d.join(f));
            }
        }
        let t0 = Instant::now();
        let mut c = start_controller(d, if fresh { "c2" } else { "c3" });
        let ready = wait_ready(&c, t0);
        let rss = rss_kib(c.child.id());
        // Idle: nothing left to write.
        let log_len = std::fs::read_to_string(&c.log).unwrap_or_default().len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let grew = std::fs::read_to_string(&c.log).unwrap_or_default().len() - log_len;
        let text = std::fs::read_to_string(&c.log).unwrap_or_default();
        let ms = |what: &str| {
            text.lines()
                .find(|l| l.contains(what))
                .and_then(|l| l.split("elapsed_ms=").nth(1))
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("?")
                .to_string()
        };
        println!(
            "startup with {n} Services, {label}: ready and idle in {ready:.2?} (target < 5 s; caches synced in {} ms, initial pass {} ms); RSS {:.1} MiB; log grew {grew} bytes in the next 3 s",
            ms("caches synced"),
            ms("initial pass done"),
            rss as f64 / 1024.0
        );
        stop(&mut c);
    }
    // Nothing was renumbered.
    let list = big.list(&Default::default()).await.unwrap();
    let mut by: HashMap<String, String> = HashMap::new();
    for s in list.items {
        let ip = s
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.into_iter().next())
            .and_then(|i| i.ip);
        by.insert(s.metadata.name.unwrap_or_default(), ip.unwrap_or_default());
    }
    let moved = (0..n)
        .filter(|i| by.get(&format!("b{i}")).map(String::as_str) != Some(&format!("2001:db8:b::{:x}", i + 1)[..]))
        .count();
    println!("renumbered after both restarts: {moved} of {n}");
}
