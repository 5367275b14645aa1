//! `vipvisor hypervisor …` against a real libvirtd 9.0 (tests/testbed/libvirt.sh: its own
//! network namespace, `qemu:///system`), with a defined, stopped guest whose NIC has
//! `clean-traffic` and the operator's `IP`: inventory, diagnose (exit 4 naming the filter),
//! apply (a CONFIG-only device update on a stopped domain, read back), idempotence (the
//! domain XML byte-identical, no update), revert (exactly the operator's list again), and
//! bad input (unknown node, unreachable URI, malformed file, a NIC that is not there).
//! Needs root; outside CI it is skipped with the reason when libvirtd is missing.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vipvisor_testkit as common;

const VIPVISOR: &str = env!("CARGO_BIN_EXE_vipvisor");
/// One libvirtd at a time (each test starts its own testbed).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const URI: &str = "qemu:///system";

struct Testbed {
    dir: tempfile::TempDir,
}

impl Testbed {
    /// Starts libvirtd with its state in `dir` (a guest image may already be there).
    fn start(dir: tempfile::TempDir) -> Testbed {
        let started =
            Command::new(common::repo("tests/testbed/libvirt.sh")).arg("start").arg(dir.path()).output().unwrap();
        assert!(started.status.success(), "libvirt testbed: {}", String::from_utf8_lossy(&started.stderr));
        Testbed { dir }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new(common::repo("tests/testbed/libvirt.sh")).arg("stop").arg(self.dir.path()).status();
    }
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh").args(["-q", "-c", URI]).args(args).output().unwrap();
    assert!(out.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `virsh define` (or `net-define`) of `xml`.
fn define(command: &str, xml: &str, dir: &Path) {
    let f = dir.join(format!("{command}.xml"));
    std::fs::write(&f, xml).unwrap();
    virsh(&[command, f.to_str().unwrap()]);
}

fn missing() -> Option<String> {
    if let Some(why) = common::lab_missing(&[]) {
        return Some(why);
    }
    ["libvirtd", "virsh", "qemu-system-x86_64"]
        .iter()
        .find(|t| {
            !Command::new("sh").args(["-c", &format!("command -v {t} >/dev/null")]).status().is_ok_and(|s| s.success())
        })
        .map(|t| format!("{t} is not installed (tests/testbed/libvirt.sh install install-qemu)"))
}

fn ips_of(xml: &str, mac: &str) -> Vec<String> {
    let d = vipvisor_libvirt::xml::parse_domain(xml).unwrap();
    let i = d.interfaces.iter().find(|i| i.nic.mac.to_string() == mac).unwrap();
    i.nic.filter.as_ref().map(|f| f.values("IP").map(str::to_owned).collect()).unwrap_or_default()
}

struct Cli {
    store: String,
    providers: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(VIPVISOR)
            .env("VIPVISOR_STORE", &self.store)
            .arg("hypervisor")
            .args(args)
            .arg("--providers")
            .arg(&self.providers)
            .output()
            .unwrap();
        let (o, e) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(!e.contains("panicked"), "{e}");
        (out.status.code().unwrap_or(-1), o, e)
    }
    fn ok(&self, args: &[&str]) -> String {
        let (code, o, e) = self.run(args);
        assert_eq!(code, 0, "vipvisor hypervisor {args:?}: {o}{e}");
        o
    }
}

/// The network `vv-lab` and the stopped guest `n1`, whose NIC 52:54:00:00:00:21 is under
/// the operator's `clean-traffic` with `IP=192.0.2.21`; `more_nics` go after it.
fn define_guest(d: &Path, more_nics: &str) {
    define("net-define", "<network><name>vv-lab</name><forward mode='bridge'/><bridge name='vvbr0'/></network>", d);
    let xml = format!(
        "<domain type='qemu'><name>n1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <interface type='network'><mac address='52:54:00:00:00:21'/><source network='vv-lab'/><model type='virtio'/>\
         <filterref filter='clean-traffic'><parameter name='IP' value='192.0.2.21'/></filterref></interface>\
         {more_nics}</devices></domain>"
    );
    define("define", &xml, d);
}

#[test]
fn grants_are_applied_idempotent_and_reverted_on_a_real_libvirtd() {
    if common::skip("the libvirt suite", missing()) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tb = Testbed::start(tempfile::tempdir().unwrap());
    let d = tb.dir.path();
    // The operator's guest: NIC 1 under clean-traffic with its own address, NIC 2 without
    // any filter.
    define_guest(
        d,
        "<interface type='network'><mac address='52:54:00:00:00:31'/><source network='vv-lab'/><model type='virtio'/></interface>",
    );
    let providers = d.join("providers.yaml");
    std::fs::write(&providers, "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n").unwrap();
    let cli = Cli { store: format!("sqlite://{}/store/v.db", d.display()), providers };
    let mac = "52:54:00:00:00:21";
    let xml = || virsh(&["dumpxml", "--inactive", "n1"]);

    // Inventory: the VM, both NICs, the filter and its parameter.
    let inv: serde_json::Value = serde_json::from_str(&cli.ok(&["inventory", "-o", "json"])).unwrap();
    let vm = &inv[0]["vms"].as_array().unwrap().iter().find(|v| v["name"] == "n1").cloned().unwrap();
    assert_eq!(vm["running"], false);
    assert_eq!(vm["nics"][0]["mac"], mac);
    assert_eq!(vm["nics"][0]["network"], "vv-lab");
    assert_eq!(vm["nics"][0]["filter"]["name"], "clean-traffic");
    assert!(cli.ok(&["inventory"]).contains("clean-traffic (IP=192.0.2.21)"));

    // Diagnose: the VIP is dropped by clean-traffic; exit 4.
    let (code, out, _) = cli.run(&["diagnose", "--node", "n1", "--vip", "192.0.2.100"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("blocking")
            && out.contains("192.0.2.100")
            && out.contains("clean-traffic")
            && out.contains("IP = 192.0.2.21"),
        "{out}"
    );
    let (code, out, _) = cli.run(&["diagnose", "--node", "n1", "--vip", "2001:db8::100"]);
    assert_eq!(code, 4, "clean-traffic drops all IPv6: {out}");

    // Apply: one CONFIG update (the domain is stopped), read back; the operator's address
    // stays first.
    let before = xml();
    let out = cli.ok(&["apply", "--node", "n1", "--vip", "192.0.2.100,192.0.2.21"]);
    assert!(out.contains("applied n1 n1 NIC 52:54:00:00:00:21") && out.contains("(changed)"), "{out}");
    assert_eq!(ips_of(&xml(), mac), ["192.0.2.21", "192.0.2.100"]);
    let (code, out, _) = cli.run(&["diagnose", "--node", "n1", "--vip", "192.0.2.100"]);
    assert_eq!(code, 0, "granted: nothing blocks: {out}");
    // Idempotent: no update, the XML byte-identical.
    let granted = xml();
    assert!(cli.ok(&["apply", "--node", "n1", "--vip", "192.0.2.100"]).contains("(unchanged)"));
    assert_eq!(xml(), granted, "a second apply writes nothing");
    let events =
        Command::new(VIPVISOR).env("VIPVISOR_STORE", &cli.store).args(["events", "-o", "json"]).output().unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    assert_eq!(events.matches("hypervisor.granted").count(), 1, "{events}");

    // Revert: exactly the operator's list again (192.0.2.21 was the operator's, never ours).
    let out = cli.ok(&["revert"]);
    assert!(out.contains("revoked") && out.contains("(changed)"), "{out}");
    assert_eq!(ips_of(&xml(), mac), ["192.0.2.21"]);
    assert_eq!(ips_of(&xml(), mac), ips_of(&before, mac));
    assert!(cli.ok(&["revert"]).contains("no grants"));

    // IPv6: clean-traffic drops all of it; with `ipv6_filter: vipvisor` the grant puts
    // vipvisor's filter (clean-traffic's protections, NDP from the IPV6 list) in its place,
    // and revert brings the operator's filter back.
    let v6 = d.join("providers-v6.yaml");
    std::fs::write(
        &v6,
        "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n    ipv6_filter: vipvisor\n",
    )
    .unwrap();
    let cli6 = Cli { store: cli.store.clone(), providers: v6 };
    let out = cli.ok(&["apply", "--node", "n1", "--vip", "2001:db8::100"]);
    assert!(
        out.contains("(unchanged)") && out.contains("still blocked") && out.contains("ipv6_filter"),
        "not allowed: {out}"
    );
    assert_eq!(xml(), before, "nothing changed without ipv6_filter");
    let out = cli6.ok(&["apply", "--node", "n1", "--vip", "2001:db8::100"]);
    assert!(out.contains("(changed)") && !out.contains("still blocked"), "{out}");
    let nic = |x: &str| {
        let d = vipvisor_libvirt::xml::parse_domain(x).unwrap();
        d.interfaces.into_iter().find(|i| i.nic.mac.to_string() == mac).unwrap().nic.filter.unwrap()
    };
    let f = nic(&xml());
    assert_eq!(f.name, "vipvisor-clean-traffic-v6");
    assert_eq!(
        f.params,
        [("IP".to_string(), "192.0.2.21".to_string()), ("IPV6".to_string(), "2001:db8::100".to_string())]
    );
    assert!(virsh(&["nwfilter-list"]).contains("vipvisor-clean-traffic-v6"), "vipvisor's filter is defined");
    let (code, out, _) = cli6.run(&["diagnose", "--node", "n1", "--vip", "2001:db8::100"]);
    assert_eq!(code, 0, "{out}");
    cli6.ok(&["revert", "--vip", "2001:db8::100"]);
    assert_eq!(nic(&xml()), nic(&before), "the operator's clean-traffic with IP=192.0.2.21 again");

    // Driven by the store: every allocation's addresses on every mapped node.
    let mapped = d.join("providers-mapped.yaml");
    std::fs::write(&mapped, "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\nnodes:\n  - node: n1\n    provider: kvm1\n    vm: n1\n").unwrap();
    let ipam = |args: &[&str]| {
        let out = Command::new(VIPVISOR).env("VIPVISOR_STORE", &cli.store).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ipam(&["pool", "add", "web", "--addresses", "198.51.100.0/30"]);
    ipam(&["alloc", "request", "default/web"]);
    let (code, _, err) = cli.run(&["apply"]);
    assert!(code == 1 && err.contains("no `nodes:` mapping"), "{err}");
    let cli_m = Cli { store: cli.store.clone(), providers: mapped };
    assert!(cli_m.ok(&["apply"]).contains("(changed)"));
    assert_eq!(ips_of(&xml(), mac), ["192.0.2.21", "198.51.100.0"], "the allocation's address is granted on n1");
    cli_m.ok(&["revert"]);
    assert_eq!(ips_of(&xml(), mac), ["192.0.2.21"]);

    // Bad input: each error names the value; nothing changes.
    let unchanged = xml();
    let (code, _, err) = cli.run(&["apply", "--node", "n9", "--vip", "192.0.2.100"]);
    assert!(code == 1 && err.contains("node \"n9\" has no VM"), "{err}");
    let (code, _, err) = cli.run(&["apply", "--node", "n1", "--vip", "192.0.2.300"]);
    assert!(code == 2 && err.contains("192.0.2.300"), "{err}");
    let bad = d.join("bad.yaml");
    for (text, needle) in [
        ("providers: [{name: kvm1, kind: libvirt, uri: 'qemu+ssh://nonexistent.invalid/system'}]", "qemu+ssh://nonexistent.invalid/system"),
        ("providers: [{name: kvm1, kind: libvirt, uri: qemu:///system, secret: x}]", "unknown field `secret`"),
        ("providers: [{name: kvm1, kind: libvirt, uri: qemu:///system}]\nnodes: [{node: n1, provider: kvm1, vm: n1, mac: '52:54:00:00:00:99'}]", "no NIC with MAC 52:54:00:00:00:99"),
        ("providers: [{name: kvm1, kind: libvirt, uri: qemu:///system}]\nnodes: [{node: n1, provider: kvm1, vm: ghost}]", "node \"n1\" has no VM"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(VIPVISOR)
            .env("VIPVISOR_STORE", &cli.store)
            .args(["hypervisor", "apply", "--node", "n1", "--vip", "192.0.2.100", "--providers"])
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{text}: expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(xml(), unchanged, "no failed call changed the domain");

    // A granted VM that is deleted (or recreated with another NIC) leaves a grant with
    // nothing to take back: revert forgets it instead of failing for ever.
    cli.ok(&["apply", "--node", "n1", "--vip", "192.0.2.100"]);
    virsh(&["undefine", "n1"]);
    let out = cli.ok(&["revert"]);
    assert!(out.contains("revoked n1 n1"), "{out}");
    assert!(cli.ok(&["revert"]).contains("no grants"), "the grant is gone from the store");
}

/// `vipvisor serve --providers FILE` on a real libvirtd: the hypervisor page's read model
/// (node ↔ VM ↔ NIC, the providers' findings for the VIPs announced now, the verdict),
/// the fix as a dry-run diff that changes nothing, an apply by an admin (recorded under
/// its token, read back from the domain XML), the verdict after it, and the undo; a viewer
/// may look but not fix.
#[test]
fn the_served_hypervisor_page_diagnoses_fixes_and_undoes_on_a_real_libvirtd() {
    if common::skip("the libvirt suite", missing()) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tb = Testbed::start(tempfile::tempdir().unwrap());
    let d = tb.dir.path();
    define_guest(d, "");
    let mac = "52:54:00:00:00:21";
    let xml = || virsh(&["dumpxml", "--inactive", "n1"]);
    let before = xml();
    let providers = d.join("providers.yaml");
    std::fs::write(&providers, "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n").unwrap();
    let store = format!("sqlite://{}/store/v.db", d.display());
    let token = |name: &str, role: &str| {
        let out = Command::new(VIPVISOR)
            .args(["--store", &store, "-o", "json", "token", "create", name, "--role", role])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["token"].as_str().unwrap().to_string()
    };
    let (admin, viewer) = (token("ops", "admin"), token("dash", "viewer"));
    // n1 announces 192.0.2.100, as a recording speaker or the controller would write it.
    let vip: std::net::IpAddr = "192.0.2.100".parse().unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let app = vipvisor_api::App::open(&store, "test", Duration::ZERO).await.unwrap();
        let claim = vipvisor_api::OwnerClaim {
            address: vip,
            node: "n1".into(),
            interface: "eth0".into(),
            mac: mac.into(),
            source: "group",
        };
        app.set_owners(
            "group",
            &std::collections::BTreeMap::from([(vip, claim)]),
            vipvisor_api::OwnerScope::Node("n1"),
        )
        .await
        .unwrap();
        app.close().await;
    });
    let out_file = d.join("serve.out");
    let mut serve = Command::new(VIPVISOR)
        .args(["--store", &store, "serve", "--listen", "127.0.0.1:0", "--providers"])
        .arg(&providers)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(d.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let serve = Kill(&mut serve);
    let mut base = String::new();
    common::wait_until(
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&out_file).unwrap_or_default();
            base = text
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(|u| u.split("/login").next().unwrap_or("").to_string())
                .unwrap_or_default();
            !base.is_empty()
        },
        "serve to start",
    );
    let call = |method: &str, path: &str, token: &str, body: Option<&str>| -> (u16, serde_json::Value) {
        let mut args = vec![
            "-s".to_string(),
            "-o".into(),
            "-".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            "-X".into(),
            method.into(),
            "-H".into(),
            format!("Authorization: Bearer {token}"),
        ];
        if let Some(b) = body {
            args.extend(["-H".into(), "Content-Type: application/json".into(), "-d".into(), b.into()]);
        }
        args.push(format!("{base}/api/v1/{path}"));
        let out = Command::new("curl").args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or_default())
    };

    // The read model: n1 is the VM n1, its NIC's clean-traffic drops the VIP.
    let (st, v) = call("GET", "hypervisor", &viewer, None);
    assert_eq!(st, 200, "{v}");
    let n1 = v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "n1").cloned().unwrap();
    assert_eq!(
        (n1["nics"][0]["nic"]["vm"].as_str(), n1["nics"][0]["nic"]["mac"].as_str()),
        (Some("n1"), Some(mac)),
        "{n1}"
    );
    assert_eq!(n1["blocked"], true, "{n1}");
    assert!(n1["verdict"].as_str().unwrap().starts_with("dropped"), "{n1}");
    let f = &n1["findings"][0];
    assert!(
        f["what"].as_str().unwrap().contains("192.0.2.100") && f["setting"].as_str().unwrap().contains("clean-traffic"),
        "{f}"
    );
    assert!(f["current"].as_str().unwrap().contains("192.0.2.21"), "the current value is shown: {f}");

    // A viewer may not fix; an admin's dry run says what would change and changes nothing.
    let (st, body) = call("POST", "hypervisor/apply", &viewer, Some(r#"{"dry_run": true}"#));
    assert_eq!((st, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (st, plan) = call("POST", "hypervisor/apply", &admin, Some(r#"{"dry_run": true}"#));
    assert_eq!(st, 200, "{plan}");
    assert_eq!(
        plan["plan"],
        serde_json::json!([{"node": "n1", "provider": "kvm1", "vm": "n1", "mac": mac, "add": ["192.0.2.100"]}])
    );
    assert_eq!(xml(), before, "a dry run changes nothing");
    let (st, body) = call("POST", "hypervisor/apply", &admin, Some(r#"{"dry_run": "yes"}"#));
    assert_eq!((st, body["code"].as_str()), (400, Some("invalid_value")), "{body}");

    // Apply: the NIC lets the VIP through, recorded under the token's name.
    let (st, done) = call("POST", "hypervisor/apply", &admin, Some("{}"));
    assert_eq!((st, done["results"][0]["state"].as_str()), (200, Some("applied")), "{done}");
    assert_eq!(ips_of(&xml(), mac), ["192.0.2.21", "192.0.2.100"]);
    let (_, v) = call("GET", "hypervisor", &viewer, None);
    let n1 = v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "n1").cloned().unwrap();
    assert_eq!((n1["blocked"].as_bool(), n1["verdict"].as_str()), (Some(false), Some("let through")), "{n1}");
    let (_, events) = call("GET", "events", &viewer, None);
    assert!(
        events.as_array().unwrap().iter().any(|e| e["kind"] == "hypervisor.granted" && e["actor"] == "token:ops"),
        "{events}"
    );
    let (_, grants) = call("GET", "grants", &viewer, None);
    assert_eq!(grants[0]["vips"], serde_json::json!(["192.0.2.100"]), "{grants}");

    // Undo: exactly the operator's list again.
    let (st, r) = call("POST", "hypervisor/revert", &admin, Some(r#"{"node": "n1"}"#));
    assert_eq!((st, r[0]["state"].as_str()), (200, Some("revoked")), "{r}");
    assert_eq!(ips_of(&xml(), mac), ips_of(&before, mac));
    let (_, grants) = call("GET", "grants", &viewer, None);
    assert_eq!(grants, serde_json::json!([]));
    drop(serve);
}

/// The client namespace of the guest proof, deleted on drop (which removes its veth).
struct ClientNs(&'static str);

impl Drop for ClientNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
    }
}

/// A started testbed with the guest image built, network `vv-guest-net` on `vvbr0`, and a
/// client namespace (192.0.2.1 on `vvc0`) on that bridge through the veth `port`. The
/// client namespace goes first on drop, then the testbed (whose state is in `dir`).
struct GuestLab {
    client: ClientNs,
    dir: PathBuf,
    guest: PathBuf,
    _tb: Testbed,
}

impl GuestLab {
    /// `extra`: a binary for the guests' initramfs (guest.sh build DIR EXTRA).
    fn start(extra: Option<&Path>, client: &'static str, port: &str) -> GuestLab {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let guest = common::repo("tests/testbed/guest.sh");
        let built = Command::new(&guest).arg("build").arg(&dir).args(extra).output().unwrap();
        assert!(built.status.success(), "guest build: {}", String::from_utf8_lossy(&built.stderr));
        // The testbed's state lives in the same directory its Drop stops.
        let tb = Testbed::start(tmp);
        define(
            "net-define",
            "<network><name>vv-guest-net</name><forward mode='bridge'/><bridge name='vvbr0'/></network>",
            &dir,
        );
        virsh(&["net-start", "vv-guest-net"]);
        let client = ClientNs(client);
        sh(&["ip", "netns", "add", client.0]);
        sh(&["ip", "-n", client.0, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", "vv-libvirt", "link", "add", port, "type", "veth", "peer", "name", "vvc0", "netns", client.0]);
        sh(&["ip", "-n", "vv-libvirt", "link", "set", port, "master", "vvbr0", "up"]);
        sh(&["ip", "-n", client.0, "addr", "add", "192.0.2.1/24", "dev", "vvc0"]);
        sh(&["ip", "-n", client.0, "link", "set", "vvc0", "up"]);
        GuestLab { client, dir, guest, _tb: tb }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The MACs answering ARP for `ip`, as the client sees them.
fn answerers(ns: &str, ip: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "arping", "-c", "2", "-w", "3", "-I", "vvc0", ip])
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .map(str::to_lowercase)
        .collect();
    v.dedup();
    v
}

/// The proof, with a real booted guest (TCG, Debian's kernel, a busybox initramfs:
/// tests/testbed/guest.sh) whose NIC has clean-traffic with its own IP and whose kernel
/// answers for the VIP: before the grant the client's arping gets no answer and diagnose
/// names the filter; after `hypervisor apply` (a LIVE|CONFIG update) the guest's MAC
/// answers; after `revert`, silence again and the IP list is the operator's.
#[test]
fn a_real_guest_answers_for_its_vip_only_after_the_grant() {
    if common::skip("the libvirt guest proof", missing().or_else(|| common::lab_missing(&["arping"]))) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = GuestLab::start(None, "vv-client-t", "vvcbr1");
    let (d, guest, client) = (lab.dir.clone(), lab.guest.clone(), lab.client.0);
    // The guest: node IP 192.0.2.21, the VIP 192.0.2.100 on its eth0 (its kernel answers).
    let mac = "52:54:00:00:02:21";
    let xml = Command::new(&guest)
        .args(["domain-xml", "g1", mac, "192.0.2.21", "192.0.2.100", "vv-guest-net"])
        .arg(&d)
        .output()
        .unwrap();
    assert!(xml.status.success(), "{}", String::from_utf8_lossy(&xml.stderr));
    define("define", &String::from_utf8_lossy(&xml.stdout), &d);
    virsh(&["start", "g1"]);
    let ready = Command::new(&guest).arg("wait-ready").arg(d.join("g1.serial.log")).arg("120").output().unwrap();
    assert!(ready.status.success(), "the guest did not come up: {}", String::from_utf8_lossy(&ready.stdout));
    eprintln!("guest ready after {} s", String::from_utf8_lossy(&ready.stdout).trim());

    let providers = d.join("providers.yaml");
    std::fs::write(&providers, "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n").unwrap();
    let cli = Cli { store: format!("sqlite://{}/store/v.db", d.display()), providers };
    assert_eq!(answerers(client, "192.0.2.21"), [mac], "the guest's own IP is allowed");
    assert!(answerers(client, "192.0.2.100").is_empty(), "clean-traffic drops the VIP's replies");
    let (code, out, _) = cli.run(&["diagnose", "--node", "g1", "--vip", "192.0.2.100"]);
    assert!(code == 4 && out.contains("clean-traffic"), "{out}");

    let t = std::time::Instant::now();
    let out = cli.ok(&["apply", "--node", "g1", "--vip", "192.0.2.100"]);
    eprintln!("live grant applied in {:?}", t.elapsed());
    assert!(out.contains("(changed)"), "{out}");
    assert_eq!(answerers(client, "192.0.2.100"), [mac], "after the grant the guest answers for the VIP");
    let live = virsh(&["dumpxml", "g1"]);
    assert!(live.contains("value='192.0.2.100'"), "the running domain has the grant");
    let granted = virsh(&["dumpxml", "--inactive", "g1"]);
    assert!(cli.ok(&["apply", "--node", "g1", "--vip", "192.0.2.100"]).contains("(unchanged)"));
    assert_eq!(virsh(&["dumpxml", "--inactive", "g1"]), granted, "a second apply writes nothing");

    cli.ok(&["revert"]);
    assert!(answerers(client, "192.0.2.100").is_empty(), "after the revert the VIP is dark again");
    assert_eq!(ips_of(&virsh(&["dumpxml", "--inactive", "g1"]), mac), ["192.0.2.21"], "the operator's list");
    assert_eq!(answerers(client, "192.0.2.21"), [mac]);
}

/// The static vipvisor the guests run (`VIPVISOR_STATIC`, built by tests/run), or `None`
/// after a loud skip when it or the testbed is missing (a failure in CI).
fn guest_speaker(what: &str) -> Option<PathBuf> {
    let static_bin = std::env::var_os("VIPVISOR_STATIC").map(PathBuf::from).filter(|p| p.exists());
    let why = missing().or_else(|| common::lab_missing(&["arping", "ping"])).or_else(|| {
        static_bin
            .is_none()
            .then(|| "VIPVISOR_STATIC (a +crt-static vipvisor, built by tests/run) is not set".to_string())
    });
    if common::skip(what, why) {
        return None;
    }
    static_bin
}

/// Grants before failover, with two real guests as the two candidate nodes of a static
/// speaker group (the static `vipvisor speaker` runs inside each guest's initramfs): both
/// hold the grant before the VIP is first announced; destroying the owner's domain moves
/// the VIP to the other guest with no provider call on the failover path (no grant event,
/// both domains' XML unchanged). The speakers' node names differ from the domains': first
/// the provider file maps them; at the end, without a mapping, `apply --speaker` finds the
/// VMs by the MACs the members gossip (a static speaker's `/members`).
#[test]
fn grants_come_before_failover_with_two_guests() {
    let Some(static_bin) = guest_speaker("the libvirt failover proof") else { return };
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = GuestLab::start(Some(&static_bin), "vv-client-f", "vvcbr2");
    let (d, guest, client) = (lab.dir.clone(), lab.guest.clone(), lab.client.0);
    let vip = "192.0.2.100";
    let nodes = [
        ("g1", "52:54:00:00:03:21", "192.0.2.21", "192.0.2.22"),
        ("g2", "52:54:00:00:03:22", "192.0.2.22", "192.0.2.21"),
    ];
    for (name, mac, ip, peer) in nodes {
        let run = format!(
            "vv.key=vipvisor-lab-gossip-key-0123456789 vv.run=vipvisor,speaker,--interface,eth0,--vip,{vip},--node-name,node-{name},--join,{peer}:7946,--gossip-key-file,/run/vv.key,--hold-time,0s,--metrics-addr,{ip}:9472"
        );
        let xml = Command::new(&guest)
            .args(["domain-xml", name, mac, ip, "", "vv-guest-net"])
            .arg(&d)
            .env("VV_GUEST_CMDLINE", run)
            .output()
            .unwrap();
        assert!(xml.status.success(), "{}", String::from_utf8_lossy(&xml.stderr));
        define("define", &String::from_utf8_lossy(&xml.stdout), &d);
    }
    // The nodes (the speakers' names) are not named like their domains: here the provider
    // file maps them; at the end the speakers' gossiped MACs do.
    let providers = d.join("providers.yaml");
    let plain = "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n";
    std::fs::write(
        &providers,
        format!("{plain}nodes:\n  - {{node: node-g1, provider: kvm1, vm: g1}}\n  - {{node: node-g2, provider: kvm1, vm: g2}}\n"),
    )
    .unwrap();
    let cli = Cli { store: format!("sqlite://{}/store/v.db", d.display()), providers };
    // Both candidates are granted while their domains are still stopped: before anything
    // announces the VIP.
    let out = cli.ok(&["apply", "--vip", vip, "--node", "node-g1", "--node", "node-g2"]);
    assert_eq!(out.matches("(changed)").count(), 2, "{out}");
    for (name, mac, ..) in nodes {
        assert!(
            ips_of(&virsh(&["dumpxml", "--inactive", name]), mac).contains(&vip.to_string()),
            "{name} holds the grant"
        );
    }
    for (name, ..) in nodes {
        virsh(&["start", name]);
    }
    for (name, ..) in nodes {
        let ready = Command::new(&guest)
            .arg("wait-ready")
            .arg(d.join(format!("{name}.serial.log")))
            .arg("120")
            .output()
            .unwrap();
        assert!(ready.status.success(), "{name} did not come up: {}", String::from_utf8_lossy(&ready.stdout));
    }
    let log = |name: &str| std::fs::read_to_string(d.join(format!("{name}.serial.log"))).unwrap_or_default();
    // One owner answers (the group formed; the other does not answer).
    let start = std::time::Instant::now();
    let owner = loop {
        let a = answerers(client, vip);
        if a.len() == 1 {
            break a[0].clone();
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no single owner: {a:?}\n{}\n{}",
            log("g1"),
            log("g2")
        );
    };
    let (owner_name, other_mac) = if owner == nodes[0].1 { ("g1", nodes[1].1) } else { ("g2", nodes[0].1) };
    let events = || {
        let out =
            Command::new(VIPVISOR).env("VIPVISOR_STORE", &cli.store).args(["events", "-o", "json"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).matches("hypervisor.").count()
    };
    let (events_before, xml_before) =
        (events(), [virsh(&["dumpxml", "--inactive", "g1"]), virsh(&["dumpxml", "--inactive", "g2"])]);
    // The owner's domain dies: the other guest takes over, already granted.
    let died = std::time::Instant::now();
    virsh(&["destroy", owner_name]);
    let gone = std::time::Instant::now();
    loop {
        if answerers(client, vip) == [other_mac] {
            break;
        }
        assert!(
            died.elapsed() < std::time::Duration::from_secs(30),
            "no takeover by {other_mac}\n{}\n{}",
            log("g1"),
            log("g2")
        );
    }
    eprintln!(
        "takeover answered {:?} after `virsh destroy` began, {:?} after it returned",
        died.elapsed(),
        gone.elapsed()
    );
    assert_eq!(events(), events_before, "no grant was made on the failover path");
    assert_eq!(
        [virsh(&["dumpxml", "--inactive", "g1"]), virsh(&["dumpxml", "--inactive", "g2"])],
        xml_before,
        "no domain was changed on the failover path"
    );

    // Static mode without a mapping: the dead guest comes back, and `apply --speaker`
    // asks a speaker for its group (`/members`: the live members with the MACs they
    // gossip, and its VIPs), then finds each member's VM by MAC.
    std::fs::write(d.join(format!("{owner_name}.serial.log")), "").unwrap();
    virsh(&["start", owner_name]);
    let ready = Command::new(&guest)
        .arg("wait-ready")
        .arg(d.join(format!("{owner_name}.serial.log")))
        .arg("120")
        .output()
        .unwrap();
    assert!(ready.status.success(), "{owner_name} did not come back: {}", String::from_utf8_lossy(&ready.stdout));
    let survivor_ip = if owner_name == "g1" { nodes[1].2 } else { nodes[0].2 };
    let members = || {
        let out = Command::new("ip")
            .args(["netns", "exec", client, "python3", "-c"])
            .arg(format!(
                "import urllib.request;print(urllib.request.urlopen('http://{survivor_ip}:9472/members', timeout=2).read().decode())"
            ))
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    common::wait_until(
        std::time::Duration::from_secs(60),
        || members()["members"].as_array().is_some_and(|m| m.len() == 2),
        "both members in the survivor's /members",
    );
    let m = members();
    assert_eq!(m["vips"], serde_json::json!([vip]), "{m}");
    assert!(
        m["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["node"] == "node-g1" && x["macs"] == serde_json::json!([nodes[0].1])),
        "{m}"
    );
    cli.ok(&["revert"]);
    std::fs::write(&cli.providers, plain).unwrap();
    let speaker = format!("{survivor_ip}:9472");
    let out = Command::new("ip")
        .args(["netns", "exec", client, VIPVISOR, "hypervisor", "apply", "--speaker", &speaker, "--providers"])
        .arg(&cli.providers)
        .env("VIPVISOR_STORE", &cli.store)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("applied node-g1 g1 NIC") && text.contains("applied node-g2 g2 NIC"), "{text}");
    for (name, mac, ..) in nodes {
        assert!(ips_of(&virsh(&["dumpxml", "--inactive", name]), mac).contains(&vip.to_string()), "{name}: {text}");
    }
    let bad = Command::new(VIPVISOR)
        .args(["hypervisor", "apply", "--speaker", "127.0.0.1:9", "--providers"])
        .arg(&cli.providers)
        .env("VIPVISOR_STORE", &cli.store)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && e.contains("--speaker 127.0.0.1:9") && !e.contains("panicked"), "{e}");
}
/// Virtual-MAC mode on a real guest: the static speaker inside the guest answers for its
/// VIP with the VIP's virtual MAC (a macvlan in the guest carries it). clean-traffic drops
/// every frame from that MAC: the client gets no answer, and diagnose names the `MAC`
/// parameter; granting the VIP alone is not enough; the `Need::VirtualMac` grant (`apply
/// --virtual-mac`: the NIC's own MAC and the virtual one as `MAC` values, live) lets the
/// client resolve the VIP to the virtual MAC and reach it; a second apply writes nothing;
/// the revert gives the operator's filter back and the VIP goes dark.
#[test]
fn a_guest_in_virtual_mac_mode_is_reached_only_after_the_virtual_mac_grant() {
    let Some(static_bin) = guest_speaker("the libvirt virtual-MAC proof") else { return };
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let lab = GuestLab::start(Some(&static_bin), "vv-client-v", "vvcbr3");
    let (d, guest, client) = (lab.dir.clone(), lab.guest.clone(), lab.client.0);
    let (mac, vip, vmac) = ("52:54:00:00:04:21", "192.0.2.100", "42:00:c0:00:02:64");
    // The VIP on the guest's lo (its kernel takes the traffic, arp_ignore=1 leaves ARP to
    // the speaker), and the speaker in virtual-MAC mode.
    let run = format!(
        "vv.lo={vip} vv.run=vipvisor,speaker,--interface,eth0,--vip,{vip},--virtual-mac,--node-name,g1,--metrics-addr,192.0.2.21:9472"
    );
    let xml = Command::new(&guest)
        .args(["domain-xml", "g1", mac, "192.0.2.21", "", "vv-guest-net"])
        .arg(&d)
        .env("VV_GUEST_CMDLINE", run)
        .output()
        .unwrap();
    assert!(xml.status.success(), "{}", String::from_utf8_lossy(&xml.stderr));
    define("define", &String::from_utf8_lossy(&xml.stdout), &d);
    virsh(&["start", "g1"]);
    let serial = d.join("g1.serial.log");
    let ready = Command::new(&guest).arg("wait-ready").arg(&serial).arg("120").output().unwrap();
    assert!(ready.status.success(), "the guest did not come up: {}", String::from_utf8_lossy(&ready.stdout));
    let log = || std::fs::read_to_string(&serial).unwrap_or_default();
    common::wait_until(
        std::time::Duration::from_secs(60),
        || log().contains("announced"),
        "the guest's speaker to announce the VIP",
    );
    assert!(!log().contains("cannot carry the virtual MAC"), "the guest made its device:\n{}", log());

    let providers = d.join("providers.yaml");
    std::fs::write(&providers, "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n").unwrap();
    let cli = Cli { store: format!("sqlite://{}/store/v.db", d.display()), providers };
    let reached = || {
        Command::new("ip")
            .args(["netns", "exec", client, "ping", "-c", "2", "-W", "1", vip])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert_eq!(answerers(client, "192.0.2.21"), [mac], "the guest's own IP is allowed");
    assert!(answerers(client, vip).is_empty(), "clean-traffic drops the frames from the virtual MAC");
    let (code, out, _) = cli.run(&["diagnose", "--node", "g1", "--vip", vip, "--virtual-mac"]);
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains(&format!("frames from the virtual MAC {vmac}"))
            && out.contains("now: no MAC parameter")
            && out.contains(&format!("fix: add MAC={vmac} (and the NIC's own MAC={mac})")),
        "diagnose names the setting that blocks the MAC: {out}"
    );

    // The VIP alone (node-MAC mode's grant) does not let the virtual MAC through.
    assert!(cli.ok(&["apply", "--node", "g1", "--vip", vip]).contains("(changed)"));
    assert!(answerers(client, vip).is_empty(), "granting the VIP alone is not enough in virtual-MAC mode");

    let t = std::time::Instant::now();
    let out = cli.ok(&["apply", "--node", "g1", "--vip", vip, "--virtual-mac"]);
    eprintln!("live virtual-MAC grant applied in {:?}", t.elapsed());
    assert!(out.contains("(changed)"), "{out}");
    let live = virsh(&["dumpxml", "g1"]);
    assert!(
        live.contains(&format!("name='MAC' value='{mac}'")) && live.contains(&format!("name='MAC' value='{vmac}'")),
        "the running domain lists its own MAC and the virtual one: {live}"
    );
    assert_eq!(answerers(client, vip), [vmac], "after the grant the client resolves the VIP to its virtual MAC");
    assert!(reached(), "and reaches the VIP");
    let (code, out, _) = cli.run(&["diagnose", "--node", "g1", "--vip", vip, "--virtual-mac"]);
    assert_eq!(code, 0, "nothing blocks after the grant: {out}");
    let granted = virsh(&["dumpxml", "--inactive", "g1"]);
    assert!(cli.ok(&["apply", "--node", "g1", "--vip", vip, "--virtual-mac"]).contains("(unchanged)"));
    assert_eq!(virsh(&["dumpxml", "--inactive", "g1"]), granted, "a second apply writes nothing");

    cli.ok(&["revert"]);
    let back = virsh(&["dumpxml", "--inactive", "g1"]);
    assert!(!back.contains("name='MAC'"), "no MAC parameter is left: {back}");
    assert_eq!(ips_of(&back, mac), ["192.0.2.21"], "the operator's list");
    assert!(answerers(client, vip).is_empty(), "after the revert the virtual MAC is dropped again");
}

/// The controller as the hypervisor reconciler (`controller --providers`), against a real
/// kube-apiserver and a real libvirtd, running as its service account (the manifests'
/// RBAC). Three Nodes with speakers (their ServiceL2Status reports, written here as the
/// speakers write them, carry their MACs): n1's VM is found by MAC (its domain is not
/// named like the node), n2's by the provider file's mapping, n3 is excluded from load
/// balancers, and n4's VM cannot be found (HypervisorGrantFailed naming it). A Service gets an address → HypervisorGranted and the VIP in the IP list of
/// n1's and n2's domains, not n3's; a second pass writes nothing; n2 stops being a
/// candidate → revoked there; the leader dies and the standby takes the grants over from
/// the Lease; the Service is deleted → revoked everywhere, the operator's lists as they
/// were.
#[test]
fn kubernetes_services_get_grants_on_every_candidate_and_lose_them_when_deleted() {
    let why = missing().or_else(common::kube_missing);
    if common::skip("the Kubernetes hypervisor lab", why) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tb = Testbed::start(tempfile::tempdir().unwrap());
    let d = tb.dir.path();
    let kdir = tempfile::tempdir().unwrap();
    let api = common::Apiserver::start(kdir.path(), None);
    let kc = api.kubeconfig();

    define("net-define", "<network><name>vv-k8s</name><forward mode='bridge'/><bridge name='vvbr0'/></network>", d);
    let nodes = [
        ("n1", "vm-a", "52:54:00:00:01:01", "192.0.2.31"),
        ("n2", "vm-b", "52:54:00:00:01:02", "192.0.2.32"),
        ("n3", "vm-c", "52:54:00:00:01:03", "192.0.2.33"),
    ];
    for (_, vm, mac, ip) in nodes {
        define(
            "define",
            &format!(
                "<domain type='qemu'><name>{vm}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
                 <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
                 <interface type='network'><mac address='{mac}'/><source network='vv-k8s'/><model type='virtio'/>\
                 <filterref filter='clean-traffic'><parameter name='IP' value='{ip}'/></filterref></interface>\
                 </devices></domain>"
            ),
            d,
        );
    }
    let ips = |vm: &str, mac: &str| ips_of(&virsh(&["dumpxml", "--inactive", vm]), mac);
    let providers = d.join("providers.yaml");
    std::fs::write(
        &providers,
        "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\nnodes:\n  - node: n2\n    provider: kvm1\n    vm: vm-b\n",
    )
    .unwrap();
    let pools = d.join("pools.yaml");
    std::fs::write(&pools, "pools:\n  - name: web\n    addresses: [198.51.100.0/28]\n").unwrap();

    let deploy = common::repo("deploy");
    for f in ["namespace.yaml", "crd.yaml", "rbac.yaml"] {
        common::kubectl(&kc, &["apply", "-f", deploy.join(f).to_str().unwrap()], None);
    }
    common::kubectl(
        &kc,
        &["wait", "--for", "condition=established", "crd/servicel2statuses.vipvisor.io", "--timeout=30s"],
        None,
    );
    // n4 runs a speaker too, but no VM has its MAC or its name.
    for (node, _, mac, _) in nodes.iter().copied().chain([("n4", "-", "52:54:00:00:01:09", "-")]) {
        let labels = if node == "n3" {
            serde_json::json!({"node.kubernetes.io/exclude-from-external-load-balancers": ""})
        } else {
            serde_json::json!({})
        };
        let n = serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": labels}});
        common::kubectl(&kc, &["apply", "-f", "-"], Some(&n.to_string()));
        let r = serde_json::json!({"apiVersion": "vipvisor.io/v1alpha1", "kind": "ServiceL2Status",
            "metadata": {"name": node, "namespace": "vipvisor-speaker"},
            "status": {"node": node, "macs": [mac], "announcing": []}});
        common::kubectl(&kc, &["apply", "-f", "-"], Some(&r.to_string()));
    }

    let sa_kc = api.impersonating("vipvisor-system", "vipvisor-controller", &d.join("sa-kubeconfig"));
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // Each replica has its own store, as in a cluster.
    let start = |identity: &str, metrics: &str| {
        Kill(
            Command::new(VIPVISOR)
                .args([
                    "--store",
                    &format!("sqlite://{}/store/{identity}.db", d.display()),
                    "controller",
                    "--kubeconfig",
                ])
                .arg(&sa_kc)
                .arg("--pools")
                .arg(&pools)
                .arg("--providers")
                .arg(&providers)
                .args(["--identity", identity, "--lease-duration", "3s", "--lease-renew", "500ms"])
                .args(["--metrics-addr", metrics])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(d.join(format!("{identity}.log"))).unwrap())
                .env("VIPVISOR_LOG", "info")
                .spawn()
                .unwrap(),
        )
    };
    let log = |identity: &str| std::fs::read_to_string(d.join(format!("{identity}.log"))).unwrap_or_default();
    let c1 = start("c1", "127.0.0.1:19471");
    common::wait_until(Duration::from_secs(30), || log("c1").contains("initial pass done"), "c1 to lead");
    let mut metrics_port = "127.0.0.1:19471";

    let svc = serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
    common::kubectl(&kc, &["apply", "-f", "-"], Some(&svc.to_string()));
    let events = |reason: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&common::kubectl(
            &kc,
            &["get", "events.events.k8s.io", "-n", "default", "-o", "json"],
            None,
        ))
        .unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == reason && e["regarding"]["name"] == "web")
            .map(|e| e["note"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    common::wait_until(
        Duration::from_secs(30),
        || !events("HypervisorGranted").is_empty(),
        "a HypervisorGranted Event",
    );
    let vip = common::kubectl(
        &kc,
        &["get", "service", "web", "-n", "default", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"],
        None,
    );
    assert!(vip.starts_with("198.51.100."), "{vip:?}");
    let note = events("HypervisorGranted").join("\n");
    assert!(
        note.contains(&vip) && note.contains("n1 (kvm1/vm-a 52:54:00:00:01:01)") && note.contains("n2 (kvm1/vm-b"),
        "{note}"
    );
    assert!(!note.contains("n3"), "the excluded node gets no grant: {note}");
    common::wait_until(
        Duration::from_secs(10),
        || !events("HypervisorGrantFailed").is_empty(),
        "HypervisorGrantFailed",
    );
    let failed = events("HypervisorGrantFailed").join("\n");
    assert!(
        failed.contains("node n4") && failed.contains("52:54:00:00:01:09"),
        "the reason names the node and its MACs: {failed}"
    );
    assert_eq!(
        ips("vm-a", "52:54:00:00:01:01"),
        ["192.0.2.31".to_string(), vip.clone()],
        "n1 found by its speaker's MAC"
    );
    assert_eq!(ips("vm-b", "52:54:00:00:01:02"), ["192.0.2.32".to_string(), vip.clone()], "n2 by the mapping");
    assert_eq!(ips("vm-c", "52:54:00:00:01:03"), ["192.0.2.33"], "n3 is excluded");
    let metrics = |port: &str| {
        let out = Command::new("curl").args(["-sf", &format!("http://{port}/metrics")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let m = metrics(metrics_port);
    assert!(m.contains("vipvisor_controller_hypervisor_grants{state=\"applied\"} 2"), "{m}");
    assert!(m.contains("vipvisor_controller_hypervisor_writes_total{provider=\"kvm1\"} 2"), "{m}");
    assert!(
        m.contains("vipvisor_controller_provider_calls_total{provider=\"kvm1\",call=\"ensure\",result=\"ok\"} 2"),
        "{m}"
    );

    // Nothing changed: the next looks call nothing, and no domain is written.
    let before = virsh(&["dumpxml", "--inactive", "vm-a"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(virsh(&["dumpxml", "--inactive", "vm-a"]), before, "byte-identical");
    assert!(
        metrics(metrics_port).contains("vipvisor_controller_hypervisor_writes_total{provider=\"kvm1\"} 2"),
        "no more writes"
    );

    // The leader dies; the standby (its own, empty store) takes the grants over from the
    // Lease, so it later revokes exactly what c1 added.
    let _c2 = start("c2", "127.0.0.1:19472");
    common::wait_until(Duration::from_secs(20), || log("c2").contains("caches synced"), "c2 to stand by");
    drop(c1);
    common::wait_until(Duration::from_secs(30), || log("c2").contains("initial pass done"), "c2 to lead");
    let l2 = log("c2");
    assert!(l2.contains("took the hypervisor grants over from the Lease") && l2.contains("grants=2"), "{l2}");
    metrics_port = "127.0.0.1:19472";
    common::wait_until(
        Duration::from_secs(10),
        || metrics(metrics_port).contains("vipvisor_controller_hypervisor_grants{state=\"applied\"} 2"),
        "c2's gauges",
    );
    assert!(!metrics(metrics_port).contains("hypervisor_writes_total"), "c2's check wrote nothing");

    // n2 is excluded now: it stops being a candidate and loses the grant.
    common::kubectl(&kc, &["label", "node", "n2", "node.kubernetes.io/exclude-from-external-load-balancers="], None);
    common::wait_until(
        Duration::from_secs(20),
        || ips("vm-b", "52:54:00:00:01:02") == ["192.0.2.32"],
        "n2's grant to be revoked",
    );
    assert!(events("HypervisorRevoked").join("\n").contains("n2 (kvm1/vm-b"), "{:?}", events("HypervisorRevoked"));
    assert_eq!(ips("vm-a", "52:54:00:00:01:01"), ["192.0.2.31".to_string(), vip.clone()], "n1 keeps it");

    // The Service goes: the grant goes, and the operator's lists are what they were.
    common::kubectl(&kc, &["delete", "service", "web", "-n", "default"], None);
    common::wait_until(
        Duration::from_secs(20),
        || ips("vm-a", "52:54:00:00:01:01") == ["192.0.2.31"],
        "n1's grant to be revoked",
    );
    common::wait_until(
        Duration::from_secs(10),
        || metrics(metrics_port).contains("vipvisor_controller_hypervisor_grants{state=\"applied\"} 0"),
        "no grant left in the store",
    );
    for c in ["c1", "c2"] {
        let l = log(c);
        assert!(!common::forbidden_in(&l) && !l.contains("panicked"), "{c}: {l}");
    }
}

/// libvirtd dies (SIGKILL, as in a crash) in the middle of `hypervisor apply` over many
/// domains: the command fails with an error naming the URI or the call, never panics, and
/// nothing is half-done: each domain either has the VIP and a grant recorded as applied, or
/// has its operator's list and no applied grant. With libvirtd back, the same apply
/// finishes the job, and revert gives every domain exactly its operator's list again.
#[test]
fn libvirtd_dying_mid_apply_leaves_no_partial_change() {
    if common::skip("the libvirt suite", missing()) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let testbed = common::repo("tests/testbed/libvirt.sh");
    let tb = Testbed::start(tempfile::tempdir().unwrap());
    let d = tb.dir.path();
    define("net-define", "<network><name>vv-crash</name><forward mode='bridge'/><bridge name='vvbr0'/></network>", d);
    const N: usize = 24;
    let vm = |i: usize| format!("vm-{i:02}");
    let mac = |i: usize| format!("52:54:00:00:02:{i:02x}");
    let own = |i: usize| format!("192.0.2.{}", 100 + i);
    for i in 0..N {
        define(
            "define",
            &format!(
                "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
                 <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
                 <interface type='network'><mac address='{}'/><source network='vv-crash'/><model type='virtio'/>\
                 <filterref filter='clean-traffic'><parameter name='IP' value='{}'/></filterref></interface>\
                 </devices></domain>",
                vm(i),
                mac(i),
                own(i)
            ),
            d,
        );
    }
    let providers = d.join("providers.yaml");
    std::fs::write(&providers, "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n").unwrap();
    let store = format!("sqlite://{}/store/v.db", d.display());
    let vip = "198.51.100.7";
    let mut args: Vec<String> = ["hypervisor", "apply", "--vip", vip].iter().map(|s| s.to_string()).collect();
    for i in 0..N {
        args.extend(["--node".to_string(), vm(i)]);
    }
    args.extend(["--providers".to_string(), providers.display().to_string()]);
    let ips = |i: usize| ips_of(&virsh(&["dumpxml", "--inactive", &vm(i)]), &mac(i));

    // Kill libvirtd as soon as the first domain has the grant.
    let apply = Command::new(VIPVISOR)
        .env("VIPVISOR_STORE", &store)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(Duration::from_secs(30), || ips(0).len() == 2, "the first grant");
    let killed = Command::new(&testbed).arg("kill-libvirtd").arg(d).output().unwrap();
    assert!(killed.status.success(), "{}", String::from_utf8_lossy(&killed.stderr));
    let out = apply.wait_with_output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the apply must fail: {o}{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains("qemu:///system") || e.contains("failed for"), "the error names the URI or the call: {e}");

    let revived = Command::new(&testbed).arg("revive-libvirtd").arg(d).output().unwrap();
    assert!(revived.status.success(), "{}", String::from_utf8_lossy(&revived.stderr));
    let rows = |store: &str| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = vipvisor_store::Store::open(store).await.unwrap();
            let r = s.grants().await.unwrap();
            s.close().await;
            r
        })
    };
    let grants = rows(&store);
    let mut granted = 0;
    for i in 0..N {
        let row = grants.iter().find(|r| r.vm == vm(i));
        let applied = row.is_some_and(|r| r.state == "applied" && r.vips.iter().any(|v| v.to_string() == vip));
        let has = ips(i);
        if has.len() == 2 {
            granted += 1;
            // Granted on the hypervisor: recorded as applied, or as a failure whose answer
            // was lost (the next call settles it).
            assert!(
                applied || row.is_some_and(|r| r.state == "failed" && r.record.contains(vip)),
                "{}: {row:?}",
                vm(i)
            );
        } else {
            assert_eq!(has, [own(i)], "{}: the operator's list, untouched", vm(i));
            assert!(!applied, "{}: not granted, so not recorded as applied: {row:?}", vm(i));
        }
    }
    assert!((1..N).contains(&granted), "the kill landed mid-apply ({granted} of {N} granted)");

    // libvirtd is back: the same apply finishes, and revert restores every list.
    let run = |args: &[String]| {
        let out = Command::new(VIPVISOR).env("VIPVISOR_STORE", &store).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&args);
    for i in 0..N {
        assert_eq!(ips(i), [own(i), vip.to_string()], "{}", vm(i));
    }
    run(&["hypervisor", "revert", "--providers", &providers.display().to_string()].map(String::from));
    for i in 0..N {
        assert_eq!(ips(i), [own(i)], "{}: exactly the operator's list", vm(i));
    }
    assert!(rows(&store).is_empty(), "no grant left");
}
