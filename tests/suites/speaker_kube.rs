//! Kubernetes mode of the speaker in a lab: three node namespaces and a client on a bridge
//! (tests/lab/l2.sh), a real kube-apiserver (tests/testbed/kube.sh) bound to the host's end
//! of a veth on that bridge, one `vipvisor speaker --kubernetes` per node namespace running
//! as the speaker's service account (impersonated, so deploy/speaker.yaml's RBAC is what it
//! gets). Node objects are created by the test (there is no kubelet), and so are
//! EndpointSlices (no kube-controller-manager). Flow: RBAC by `kubectl auth can-i`; one
//! owner reported in its ServiceL2Status, an Event and every speaker's metrics; ETP=Local
//! follows the endpoints; a NotReady node loses its VIP; an address in use elsewhere is
//! not announced and is reported as a Warning Event.
//!
//! Needs root, the lab tools and the kube testbed: in CI their absence fails the test;
//! elsewhere it is skipped, loudly.
#![allow(clippy::unwrap_used)]

use common::{repo, wait_until};
use vipvisor_kube::l2status;
use vipvisor_testkit as common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const VIPVISOR: &str = env!("CARGO_BIN_EXE_vipvisor");
const VIP: &str = "192.0.2.100";
const SA: &str = "system:serviceaccount:vipvisor-speaker:vipvisor-speaker";

struct Lab {
    prefix: String,
    net: &'static str,
    speakers: Vec<Option<Child>>,
    api: Option<common::Apiserver>,
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.speakers.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.api = None;
        let _ = Command::new(repo("tests/lab/l2.sh")).args(["down", &self.prefix]).status();
    }
}

impl Lab {
    fn kubeconfig(&self) -> PathBuf {
        self.api.as_ref().expect("the apiserver runs").kubeconfig()
    }
    /// kubectl as the admin, with `stdin` piped in if given; panics on failure.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        vipvisor_testkit::kubectl(&self.kubeconfig(), args, stdin)
    }
    fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml));
    }
    fn can(&self, args: &[&str]) -> bool {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["auth", "can-i", "--as", SA])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }
    fn node(&self, i: usize, ready: bool) {
        let name = format!("n{i}");
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["create", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|mut c| {
                let _ = c.stdin.take().unwrap().write_all(
                    format!("{{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{{\"name\":\"{name}\"}}}}")
                        .as_bytes(),
                );
                c.wait()
            });
        let status = serde_json::json!({"status": {
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "Test",
                            "lastHeartbeatTime": "2026-11-25T00:00:00Z", "lastTransitionTime": "2026-11-25T00:00:00Z"}],
            "addresses": [{"type": "InternalIP", "address": format!("{}.1{i}", self.net)}, {"type": "Hostname", "address": name}]
        }});
        self.kubectl(
            &["patch", "node", &name, "--subresource=status", "--type=merge", "-p", &status.to_string()],
            None,
        );
    }
    fn speaker(&mut self, i: usize, kubeconfig: &Path, key: &Path) {
        let log = std::fs::File::create(self.dir.path().join(format!("speaker-n{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("{}n{i}", self.prefix), VIPVISOR, "speaker", "--kubernetes"])
            .arg("--node-name")
            .arg(format!("n{i}"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--gossip-key-file")
            .arg(key)
            .args(["--metrics-addr", "127.0.0.1:9472"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.speakers[i - 1] = Some(child);
    }
    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("speaker-n{i}.log"))).unwrap_or_default()
    }
    fn logs(&self) -> String {
        (1..=3).map(|i| format!("--- n{i}\n{}", self.log(i))).collect()
    }
    /// `node,interface` of the speaker that reports announcing the VIP in its
    /// ServiceL2Status (the newest claim wins, as the controller decides).
    fn announced(&self) -> String {
        let out = self.kubectl(&["get", "servicel2statuses", "-n", "vipvisor-speaker", "-o", "json"], None);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let reports: Vec<l2status::Report> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| serde_json::from_value(o["status"].clone()).ok())
            .collect();
        l2status::announcers(&reports)
            .get(&VIP.parse().unwrap())
            .map(|a| format!("{},{}", a.node, a.interface))
            .unwrap_or_default()
    }
    /// The MACs answering ARP for the VIP, as the client sees them.
    fn answerers(&self) -> BTreeSet<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}c", self.prefix), "arping", "-c", "2", "-w", "3", "-I", "eth0", VIP])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            .map(str::to_lowercase)
            .collect()
    }
    /// Waits until the reports name `node` and only that node answers ARP.
    fn wait_owner(&self, node: &str, why: &str) {
        let mac = mac_of(node);
        let start = Instant::now();
        loop {
            let last = (self.announced(), self.answerers());
            if last.0 == format!("{node},eth0") && last.1 == BTreeSet::from([mac.clone()]) {
                eprintln!("{why}: {node} owns {VIP} after {:?}", start.elapsed());
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{why}: expected {node} ({mac}) to own {VIP}; reported {:?}, ARP answers from {:?}\n{}",
                last.0,
                last.1,
                self.logs()
            );
        }
    }
    fn owner(&self) -> String {
        self.announced().split(',').next().unwrap_or_default().to_owned()
    }
    fn metrics(&self, i: usize) -> String {
        common::speaker_metrics(&format!("{}n{i}", self.prefix))
    }
}

/// The lab MAC of node `nN`.
fn mac_of(node: &str) -> String {
    format!("02:00:00:00:00:{}", 10 + node[1..].parse::<usize>().unwrap_or(0))
}

fn slice(api_version: &str, nodes: &[(&str, bool)]) -> String {
    let endpoints: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .map(|(k, (n, ready))| {
            let mut e =
                serde_json::json!({"addresses": [format!("10.244.0.{}", k + 1)], "conditions": {"ready": ready}});
            if api_version.ends_with("v1beta1") {
                e["topology"] = serde_json::json!({"kubernetes.io/hostname": n});
            } else {
                e["nodeName"] = serde_json::json!(n);
            }
            e
        })
        .collect();
    serde_json::json!({
        "apiVersion": api_version, "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
    .to_string()
}

#[test]
fn speakers_elect_report_and_follow_endpoints_and_node_readiness() {
    let why = common::lab_missing(&["ip", "arping", "python3"]).or_else(common::kube_missing);
    if common::skip("Kubernetes speaker lab", why) {
        return;
    }
    let prefix = format!("vk{}", std::process::id() % 1000);
    let mut lab = Lab {
        prefix: prefix.clone(),
        net: "",
        speakers: vec![None, None, None],
        api: None,
        dir: tempfile::tempdir().unwrap(),
    };
    assert!(Command::new(repo("tests/lab/l2.sh")).args(["up", &prefix, "3"]).status().unwrap().success());
    // The host's link to the lab: a documentation /24 the host does not route already.
    lab.net = ["203.0.113", "198.51.100"]
        .into_iter()
        .find(|net| Command::new(repo("tests/lab/l2.sh")).args(["host", &prefix, net]).status().unwrap().success())
        .expect("no free documentation range for the host's link to the lab");
    let api_addr = format!("{}.254", lab.net);
    lab.api = Some(common::Apiserver::start(lab.dir.path(), Some(&api_addr)));

    // The manifests apply, and the speaker's RBAC is least privilege.
    for f in ["namespace.yaml", "crd.yaml", "speaker.yaml"] {
        lab.kubectl(&["apply", "-f", repo(&format!("deploy/{f}")).to_str().unwrap()], None);
    }
    lab.kubectl(
        &["wait", "--for", "condition=established", "crd/servicel2statuses.vipvisor.io", "--timeout=30s"],
        None,
    );
    for allowed in [
        &["watch", "services", "--all-namespaces"][..],
        &["list", "nodes"],
        &["create", "servicel2statuses.vipvisor.io", "-n", "vipvisor-speaker"],
        &["patch", "servicel2statuses.vipvisor.io", "-n", "vipvisor-speaker"],
        &["watch", "endpointslices.discovery.k8s.io", "--all-namespaces"],
        &["create", "events.events.k8s.io", "-n", "default"],
    ] {
        assert!(lab.can(allowed), "the speaker must be allowed to {allowed:?}");
    }
    for denied in [
        &["get", "secrets", "--all-namespaces"][..],
        &["patch", "services", "-n", "default"],
        &["patch", "services", "--subresource=status", "-n", "default"],
        &["update", "services", "-n", "default"],
        &["create", "servicel2statuses.vipvisor.io", "-n", "default"],
        &["delete", "servicel2statuses.vipvisor.io", "-n", "vipvisor-speaker"],
        &["delete", "services", "-n", "default"],
        &["patch", "nodes"],
        &["create", "endpointslices.discovery.k8s.io", "-n", "default"],
        &["create", "pods", "-n", "default"],
    ] {
        assert!(!lab.can(denied), "the speaker must not be allowed to {denied:?}");
    }
    let sa_kc = lab.api.as_ref().unwrap().impersonating(
        "vipvisor-speaker",
        "vipvisor-speaker",
        &lab.dir.path().join("speaker-kubeconfig"),
    );
    let key = lab.dir.path().join("gossip.key");
    std::fs::write(&key, "a3ViZS1sYWItZ29zc2lwLWtleS1mb3ItdGVzdHMK\n").unwrap();

    // Nodes (no kubelet here: the test plays it), a Service with an address (the
    // controller's job; here written directly), and the speakers.
    for i in 1..=3 {
        lab.node(i, true);
    }
    lab.apply(
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web","namespace":"default"},
            "spec":{"type":"LoadBalancer","selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":8080}]}}"#,
    );
    let ingress = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": VIP}]}}}).to_string();
    lab.kubectl(&["patch", "service", "web", "--subresource=status", "--type=merge", "-p", &ingress], None);
    for i in 1..=3 {
        lab.speaker(i, &sa_kc, &key);
    }

    // 1. One owner: it reports itself in its ServiceL2Status and an Event, answers ARP alone,
    //    and every speaker's metrics name it.
    // Speakers starting within milliseconds of each other may briefly pick an owner before
    // the whole group has met: wait until the reports and the ARP answers agree.
    let mut first = String::new();
    wait_until(
        Duration::from_secs(20),
        || {
            first = lab.owner();
            !first.is_empty() && lab.answerers() == BTreeSet::from([mac_of(&first)])
        },
        "the reported owner and the only ARP answerer to agree",
    );
    lab.wait_owner(&first, "initial election");
    // Each speaker's report carries its interfaces' MACs (how the hypervisor side finds
    // the node's VM NICs).
    let out = lab.kubectl(&["get", "servicel2statuses", "-n", "vipvisor-speaker", "-o", "json"], None);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let owner_report =
        list["items"].as_array().unwrap().iter().find(|o| o["status"]["node"] == first.as_str()).unwrap();
    assert_eq!(owner_report["status"]["macs"], serde_json::json!([mac_of(&first)]), "{owner_report}");
    let events = lab.kubectl(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"], None);
    assert!(
        events.contains("\"reason\": \"Announcing\"")
            && events.contains(&format!("Announcing {VIP} from node {first} on eth0")),
        "an Announcing Event names the owner: {events}"
    );
    for i in 1..=3 {
        let want = format!("vipvisor_speaker_vip_owner{{vip=\"{VIP}\",node=\"{first}\"}} 1");
        wait_until(
            Duration::from_secs(5),
            || lab.metrics(i).contains(&want),
            &format!("n{i}'s metrics to name the owner"),
        );
        assert!(lab.metrics(i).contains("vipvisor_speaker_group_members 3"), "n{i} sees 3 members");
    }

    // 2. externalTrafficPolicy: Local, with the only ready endpoint on another node: the
    //    VIP moves there. Then the endpoints scale to a third node: it follows them.
    let version = if lab.kubectl(&["api-versions"], None).lines().any(|l| l == "discovery.k8s.io/v1") {
        "discovery.k8s.io/v1"
    } else {
        "discovery.k8s.io/v1beta1"
    };
    let others: Vec<String> = (1..=3).map(|i| format!("n{i}")).filter(|n| *n != first).collect();
    lab.kubectl(
        &["patch", "service", "web", "--type=merge", "-p", r#"{"spec":{"externalTrafficPolicy":"Local"}}"#],
        None,
    );
    lab.apply(&slice(version, &[(others[0].as_str(), true), (first.as_str(), false)]));
    lab.wait_owner(&others[0], "ETP=Local, endpoint ready only on another node");
    lab.apply(&slice(version, &[(others[1].as_str(), true), (others[0].as_str(), false)]));
    lab.wait_owner(&others[1], "ETP=Local, endpoints scaled to a third node");

    // 3. Back to Cluster: a NotReady node loses its VIPs.
    lab.kubectl(
        &["patch", "service", "web", "--type=merge", "-p", r#"{"spec":{"externalTrafficPolicy":"Cluster"}}"#],
        None,
    );
    std::thread::sleep(Duration::from_secs(1));
    let owner = lab.owner();
    lab.wait_owner(&owner, "ETP=Cluster");
    let idx: usize = owner[1..].parse().unwrap();
    lab.node(idx, false);
    wait_until(Duration::from_secs(10), || lab.owner() != owner, "the NotReady node to lose the VIP");
    let next = lab.owner();
    lab.wait_owner(&next, "owner NotReady");
    assert!(lab.log(idx).contains("no longer the owner"), "the NotReady node stopped answering:\n{}", lab.log(idx));

    // 4. Virtual-MAC mode: the controller marks the Service (here written directly) with
    //    the VIP's MAC; the owner answers with it from a macvlan it creates (NET_ADMIN),
    //    reports the MAC, and says so in an Event; unmarked, it is back to the node's MAC.
    let vmac = "42:00:c0:00:02:64";
    let mark = |v: Option<String>| {
        let p = serde_json::json!({"metadata": {"annotations": {"vipvisor.io/virtual-macs": v}}}).to_string();
        lab.kubectl(&["patch", "service", "web", "--type=merge", "-p", &p], None);
    };
    mark(Some(format!("{VIP}={vmac}")));
    wait_until(
        Duration::from_secs(10),
        || lab.answerers() == BTreeSet::from([vmac.to_string()]),
        "the owner to answer with the virtual MAC",
    );
    let owner = lab.owner();
    let idx: usize = owner[1..].parse().unwrap();
    let devices = |i: usize| {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}n{i}", lab.prefix), "ip", "-o", "link", "show", "type", "macvlan"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).matches("vvm").count()
    };
    for i in 1..=3 {
        assert_eq!(devices(i), usize::from(i == idx), "only the owner n{idx} carries the MAC (n{i})");
    }
    wait_until(
        Duration::from_secs(10),
        || {
            let out = lab.kubectl(&["get", "servicel2statuses", "-n", "vipvisor-speaker", "-o", "json"], None);
            out.contains(&format!("\"mac\": \"{vmac}\""))
        },
        "the owner to report the virtual MAC in its ServiceL2Status",
    );
    wait_until(
        Duration::from_secs(10),
        || {
            let events = lab.kubectl(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"], None);
            events.contains(&format!("on eth0 with virtual MAC {vmac}"))
        },
        "an Announcing Event naming the virtual MAC",
    );
    mark(None);
    lab.wait_owner(&owner, "back to the node's MAC");
    assert_eq!(devices(idx), 0, "the device goes with the mark");

    // 5. An address some other host already uses (the client holds it on its NIC): the
    //    owner's probe finds it, does not announce it, and says so with a Warning Event.
    let taken = "192.0.2.101";
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}c", lab.prefix),
            "ip",
            "addr",
            "add",
            &format!("{taken}/24"),
            "dev",
            "eth0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    lab.apply(
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"taken","namespace":"default"},
            "spec":{"type":"LoadBalancer","ports":[{"name":"http","port":80}]}}"#,
    );
    let ingress = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": taken}]}}}).to_string();
    lab.kubectl(&["patch", "service", "taken", "--subresource=status", "--type=merge", "-p", &ingress], None);
    let want = format!("{taken} is already in use by 02:00:00:00:00:01 on eth0");
    wait_until(
        Duration::from_secs(10),
        || {
            let ev = lab.kubectl(&["get", "events.events.k8s.io", "-n", "default", "-o", "json"], None);
            ev.contains("\"reason\": \"AddressConflict\"") && ev.contains(&want)
        },
        "an AddressConflict Event for the address the client holds",
    );
    assert!(!lab.logs().contains(&format!("announced vip={taken}")), "nobody announced {taken}:\n{}", lab.logs());
    assert!(!lab.logs().contains(" 403 ") && !lab.logs().contains("Forbidden"), "no forbidden calls:\n{}", lab.logs());
}
