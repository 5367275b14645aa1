//! The `vipvisor` binary, end to end: every command, every refusal, and `-o json`.
//! Each test has its own store file in a temporary directory.
#![allow(clippy::unwrap_used)]

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

struct Cli {
    dir: TempDir,
}

impl Cli {
    fn new() -> Self {
        Cli { dir: tempfile::tempdir().unwrap() }
    }
    fn url(&self) -> String {
        format!("sqlite://{}/store/v.db", self.dir.path().display())
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("vipvisor").unwrap();
        c.env("VIPVISOR_STORE", self.url()).env("USER", "tester").env_remove("VIPVISOR_QUARANTINE").args(args);
        c
    }
    /// Runs a command that must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(out.status.success(), "vipvisor {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
    /// Runs a command that must fail with nothing on stdout; returns stderr.
    fn err(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(!out.status.success(), "vipvisor {args:?} should fail");
        assert!(
            out.stdout.is_empty(),
            "vipvisor {args:?} failed but printed to stdout: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
    /// A refusal must leave the audit log (and so the store) as it was.
    fn err_unchanged(&self, args: &[&str]) -> String {
        let before = self.ok(&["events", "-o", "json"]);
        let e = self.err(args);
        assert_eq!(self.ok(&["events", "-o", "json"]), before, "vipvisor {args:?} was refused but changed the store");
        e
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "expected {n:?} in: {text}");
    }
}

#[test]
fn pool_add_list_show_rm() {
    let c = Cli::new();
    let out = c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28,2001:db8::/120", "--priority", "10"]);
    assert_mentions(&out, &["pool web created", "192.0.2.0/28"]);
    c.ok(&[
        "pool",
        "add",
        "lab",
        "--addresses",
        "198.51.100.10-198.51.100.20",
        "--no-auto-assign",
        "--avoid-buggy-ips",
        "--namespaces",
        "lab,dev",
        "--namespace-selector",
        "team=lab",
        "--service-selector",
        "expose=yes",
    ]);
    let list = c.json(&["pool", "list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["lab", "web"]);
    let lab = &list[0];
    assert_eq!(lab["auto_assign"], false);
    assert_eq!(lab["avoid_buggy_ips"], true);
    assert_eq!(lab["namespaces"], serde_json::json!(["dev", "lab"]));
    assert_eq!(lab["namespace_selector"]["team"], "lab");
    assert_eq!(lab["service_selector"]["expose"], "yes");
    let table = c.ok(&["pool", "list"]);
    assert_mentions(&table, &["NAME", "lab", "web", "198.51.100.10-198.51.100.20"]);

    let show = c.json(&["pool", "show", "web"]);
    assert_eq!(show["priority"], 10);
    let fams = show["families"].as_array().unwrap();
    assert_eq!(fams[0]["family"], "ipv4");
    assert_eq!(fams[0]["size"], 16);
    assert_eq!(fams[1]["size"], 256);
    assert_mentions(&c.ok(&["pool", "show", "web"]), &["FAMILY", "QUARANTINED", "IPv6"]);

    assert_mentions(&c.ok(&["pool", "rm", "lab"]), &["pool lab removed"]);
    let rm = c.json(&["pool", "rm", "web"]);
    assert_eq!(rm["changed"], true);
    assert_eq!(c.json(&["pool", "list"]), serde_json::json!([]));
}

#[test]
fn pool_validation_errors_name_the_value_and_write_nothing() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28"]);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["pool", "add", "other", "--addresses", "192.0.2.8/29"],
            &["192.0.2.8/29", "overlaps pool \"web\"", "192.0.2.0/28"],
        ),
        (&["pool", "add", "web", "--addresses", "203.0.113.0/28"], &["pool \"web\" already exists"]),
        (&["pool", "add", "x", "--addresses", "192.0.2.300/28"], &["192.0.2.300/28", "expected"]),
        (&["pool", "add", "x", "--addresses", "203.0.113.5/28"], &["203.0.113.5/28", "host bits", "203.0.113.0/28"]),
        (
            &["pool", "add", "x", "--addresses", "203.0.113.20-203.0.113.10"],
            &["203.0.113.20-203.0.113.10", "lower than or equal"],
        ),
        (&["pool", "add", "x", "--addresses", "203.0.113.1-2001:db8::1"], &["203.0.113.1-2001:db8::1", "same family"]),
        (
            &["pool", "add", "x", "--addresses", "203.0.113.0/28,203.0.113.8/29"],
            &["203.0.113.0/28 overlaps 203.0.113.8/29"],
        ),
        (&["pool", "add", "x", "--addresses", "203.0.113.255", "--avoid-buggy-ips"], &["pool \"x\"", "empty"]),
        (&["pool", "add", "x"], &["--addresses"]),
        (&["pool", "add", "x", "--addresses", "203.0.113.0/28", "--colour", "red"], &["--colour"]),
        (&["pool", "add", "Bad_Name", "--addresses", "203.0.113.0/28"], &["Bad_Name", "lowercase"]),
        (
            &["pool", "add", "x", "--addresses", "203.0.113.0/28", "--namespace-selector", "team"],
            &["team", "KEY=VALUE"],
        ),
        (&["pool", "add", "x", "--addresses", "203.0.113.0/28", "--priority", "-1"], &["-1"]),
        (&["pool", "show", "nope"], &["unknown pool \"nope\""]),
        (&["pool", "rm", "nope"], &["unknown pool \"nope\""]),
    ];
    for (args, needles) in cases {
        let e = c.err_unchanged(args);
        assert_mentions(&e, needles);
    }
    assert_eq!(c.json(&["pool", "list"]).as_array().unwrap().len(), 1, "refused adds wrote no pool");
}

#[test]
fn removing_a_pool_in_use_needs_force_and_is_recorded() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28"]);
    c.ok(&["alloc", "request", "default/a"]);
    let e = c.err_unchanged(&["pool", "rm", "web"]);
    assert_mentions(&e, &["default/a holds 192.0.2.0", "--force"]);
    let out = c.ok(&["pool", "rm", "web", "--force"]);
    assert_mentions(&out, &["released 192.0.2.0 from default/a (forced)"]);
    let events = c.json(&["events"]);
    assert!(
        events.as_array().unwrap().iter().any(|e| e["kind"] == "address.force_released" && e["subject"] == "default/a"),
        "the forced release is in the audit log: {events}"
    );
    assert_eq!(c.json(&["alloc", "list"]), serde_json::json!([]));
}

#[test]
fn reservations() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/29"]);
    assert_mentions(&c.ok(&["reserve", "add", "192.0.2.0", "--note", "gateway"]), &["reserved 192.0.2.0"]);
    c.ok(&["reserve", "add", "192.0.2.1-192.0.2.2", "--note", "hosts"]);
    let list = c.json(&["reserve", "list"]);
    assert_eq!(list[0]["block"], "192.0.2.0");
    assert_eq!(list[0]["note"], "gateway");
    assert_mentions(&c.ok(&["reserve", "list"]), &["BLOCK", "192.0.2.1-192.0.2.2", "hosts"]);
    let a = c.json(&["alloc", "request", "default/a"]);
    assert_eq!(a["addresses"][0], "192.0.2.3", "reserved addresses are never handed out");
    let e = c.err_unchanged(&["alloc", "request", "default/b", "--ip", "192.0.2.1"]);
    assert_mentions(&e, &["192.0.2.1", "reserved", "hosts"]);
    assert_mentions(
        &c.err_unchanged(&["reserve", "add", "192.0.2.2-192.0.2.4"]),
        &["overlaps reservation 192.0.2.1-192.0.2.2"],
    );
    assert_mentions(&c.err_unchanged(&["reserve", "add", "192.0.2.3"]), &["default/a holds 192.0.2.3", "--force"]);
    assert_mentions(&c.err_unchanged(&["reserve", "rm", "192.0.2.7"]), &["unknown reservation 192.0.2.7"]);
    assert_mentions(&c.err_unchanged(&["reserve", "add", "nonsense"]), &["nonsense", "expected"]);
    assert_mentions(&c.ok(&["reserve", "rm", "192.0.2.0"]), &["reservation 192.0.2.0 removed"]);
    assert_eq!(c.json(&["reserve", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn alloc_request_json_shape_and_idempotence() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28,2001:db8::/120"]);
    let a = c.json(&["alloc", "request", "default/web", "--uid", "0b4a-11"]);
    assert_eq!(a, serde_json::json!({"service": "default/web", "addresses": ["192.0.2.0"], "pool": "web"}));
    assert_eq!(c.json(&["alloc", "request", "default/web"]), a, "asking again returns the same addresses");
    assert_mentions(&c.ok(&["alloc", "request", "default/web"]), &["default/web 192.0.2.0 from pool web (unchanged)"]);
    let d = c.json(&["alloc", "request", "default/dual", "--family", "dual"]);
    // 2001:db8:: is the subnet-router anycast address of its /64: never handed out.
    assert_eq!(d["addresses"], serde_json::json!(["192.0.2.1", "2001:db8::1"]));
    let v6 = c.json(&["alloc", "request", "default/v6", "--family", "ipv6"]);
    assert_eq!(v6["addresses"], serde_json::json!(["2001:db8::2"]));
    let prefer = c.json(&["alloc", "request", "default/prefer", "--family", "prefer-dual"]);
    assert_eq!(prefer["addresses"].as_array().unwrap().len(), 2, "prefer-dual: both families where the pool has both");
    let pick = c.json(&["alloc", "request", "default/pick", "--ip", "192.0.2.9,2001:db8::99"]);
    assert_eq!(pick["addresses"], serde_json::json!(["192.0.2.9", "2001:db8::99"]));
    let list = c.json(&["alloc", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 5);
    let web = list.as_array().unwrap().iter().find(|a| a["service"] == "default/web").unwrap();
    assert_eq!(web["uid"], "0b4a-11", "the uid given at creation is recorded");
    assert_mentions(&c.ok(&["alloc", "list"]), &["SERVICE", "default/web", "192.0.2.0", "0b4a-11"]);
}

#[test]
fn sharing_keys_and_ports() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/30"]);
    let dns = c.json(&["alloc", "request", "default/dns-udp", "--sharing-key", "dns", "--ports", "udp/53"]);
    let tcp = c.json(&["alloc", "request", "default/dns-tcp", "--sharing-key", "dns", "--ports", "tcp/53"]);
    assert_eq!(dns["addresses"], tcp["addresses"], "same key, other ports: one address");
    let e = c.err_unchanged(&[
        "alloc",
        "request",
        "default/clash",
        "--sharing-key",
        "dns",
        "--ports",
        "udp/53",
        "--ip",
        "192.0.2.0",
    ]);
    assert_mentions(&e, &["udp/53", "default/dns-udp"]);
    let e = c.err_unchanged(&["alloc", "request", "default/other", "--sharing-key", "web", "--ip", "192.0.2.0"]);
    assert_mentions(&e, &["192.0.2.0", "in use by default/dns-", "sharing key \"dns\""]);
    let e = c.err_unchanged(&["alloc", "request", "default/plain", "--ip", "192.0.2.0"]);
    assert_mentions(&e, &["in use by"]);
    assert_mentions(
        &c.err_unchanged(&["alloc", "request", "default/x", "--ports", "tcp/0"]),
        &["tcp/0", "PROTOCOL/NUMBER"],
    );
}

#[test]
fn allocation_errors_are_distinct_and_clear() {
    let c = Cli::new();
    let e = c.err_unchanged(&["alloc", "request", "default/a"]);
    assert_mentions(&e, &["no eligible pool", "there are no pools"]);
    c.ok(&["pool", "add", "tiny", "--addresses", "192.0.2.0/31", "--namespaces", "web"]);
    c.ok(&["pool", "add", "manual", "--addresses", "198.51.100.0/30", "--no-auto-assign"]);
    let e = c.err_unchanged(&["alloc", "request", "db/a"]);
    assert_mentions(
        &e,
        &["no eligible pool for db/a", "namespace \"db\" is not one of its namespaces [web]", "auto_assign is off"],
    );
    c.ok(&["alloc", "request", "web/a"]);
    c.ok(&["alloc", "request", "web/b"]);
    let e = c.err_unchanged(&["alloc", "request", "web/c"]);
    assert_mentions(&e, &["pool exhausted", "web/c", "\"tiny\""]);
    assert_mentions(&c.err_unchanged(&["alloc", "request", "web/c", "--pool", "nope"]), &["unknown pool \"nope\""]);
    assert_mentions(
        &c.err_unchanged(&["alloc", "request", "web/c", "--ip", "203.0.113.9"]),
        &["203.0.113.9 is not in any pool"],
    );
    assert_mentions(
        &c.err_unchanged(&["alloc", "request", "web/c", "--family", "ipv6"]),
        &["no eligible pool", "no IPv6 addresses"],
    );
    assert_mentions(
        &c.err_unchanged(&["alloc", "request", "web/c", "--ip", "192.0.2.0,192.0.2.1"]),
        &["192.0.2.0,192.0.2.1", "at most one IPv4 and one IPv6"],
    );
    assert_mentions(&c.err_unchanged(&["alloc", "request", "noslash"]), &["noslash", "NAMESPACE/NAME"]);
    assert_mentions(&c.err_unchanged(&["alloc", "request", "a/b", "--family", "ipv5"]), &["ipv5"]);
    // A pool without auto-assign is used when named.
    let m = c.json(&["alloc", "request", "db/m", "--pool", "manual"]);
    assert_eq!(m["pool"], "manual");
}

#[test]
fn release_quarantine_and_uid() {
    let c = Cli::new();
    c.ok(&["pool", "add", "one", "--addresses", "192.0.2.7/32"]);
    c.ok(&["alloc", "request", "default/a", "--uid", "u-1"]);
    assert_mentions(&c.err_unchanged(&["alloc", "release", "default/a", "--uid", "u-2"]), &["uid u-1", "not u-2"]);
    let r = c.json(&["alloc", "release", "default/a", "--uid", "u-1"]);
    assert_eq!(r["released"], serde_json::json!(["192.0.2.7"]));
    assert!(r["quarantined_until"].is_string(), "the default quarantine is 60 s: {r}");
    assert_mentions(&c.err_unchanged(&["alloc", "request", "default/b"]), &["pool exhausted"]);
    assert_mentions(
        &c.err_unchanged(&["alloc", "request", "default/b", "--ip", "192.0.2.7"]),
        &["quarantined until", "default/a"],
    );
    assert_eq!(c.json(&["alloc", "request", "default/a"])["addresses"][0], "192.0.2.7", "the last holder gets it back");
    assert_mentions(&c.ok(&["alloc", "release", "default/a", "--quarantine", "0s"]), &["default/a released 192.0.2.7"]);
    assert_eq!(c.json(&["alloc", "request", "default/b"])["addresses"][0], "192.0.2.7", "no quarantine with 0s");
    assert_mentions(&c.ok(&["alloc", "release", "default/none"]), &["held no addresses"]);
    assert_mentions(&c.err(&["alloc", "release", "default/a", "--quarantine", "soon"]), &["soon", "duration"]);
}

#[test]
fn apply_is_idempotent_prunes_and_refuses_bad_files() {
    let c = Cli::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pools.yaml");
    let first = c.ok(&["apply", "-f", example]);
    assert_mentions(&first, &["pool web created", "pool lab created", "reservation 192.0.2.1 created"]);
    let second = c.ok(&["apply", "-f", example]);
    assert_mentions(&second, &["pool web unchanged", "no changes"]);
    let j = c.json(&["apply", "-f", example]);
    assert_eq!(j["changed"], false);
    c.ok(&["pool", "add", "extra", "--addresses", "203.0.113.0/28"]);
    c.ok(&["alloc", "request", "default/x", "--pool", "extra"]);
    assert_mentions(&c.ok(&["apply", "-f", example]), &["no changes"]);
    assert_mentions(
        &c.err_unchanged(&["apply", "-f", example, "--prune"]),
        &["default/x holds 203.0.113.0", "--force"],
    );
    let pruned = c.ok(&["apply", "-f", example, "--prune", "--force"]);
    assert_mentions(&pruned, &["pool extra removed", "released 203.0.113.0 from default/x (forced)"]);

    let bad: &[(&str, &[&str])] = &[
        ("pools:\n  - name: a\n    addresses: [203.0.113.0/28]\n    colour: red\n", &["unknown field `colour`"]),
        ("pools:\n  - name: a\n    addresses: []\n", &["pool \"a\"", "empty"]),
        ("pools:\n  - name: a\n    addresses: [192.0.2.0/30]\n", &["192.0.2.0/30", "overlaps", "\"web\""]),
        ("pools:\n  - name: a\n    addresses: [203.0.113.9-203.0.113.1]\n", &["203.0.113.9-203.0.113.1"]),
        ("pools: {", &["pools.yaml"]),
    ];
    for (text, needles) in bad {
        let f = c.file("pools.yaml", text);
        assert_mentions(&c.err_unchanged(&["apply", "-f", &f]), needles);
    }
    assert_mentions(
        &c.err(&["apply", "-f", "/nonexistent/pools.yaml"]),
        &["cannot read pools file /nonexistent/pools.yaml"],
    );
}

#[test]
fn events_since_and_limit() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28"]);
    c.ok(&["alloc", "request", "default/a"]);
    c.ok(&["alloc", "release", "default/a"]);
    let all = c.json(&["events"]);
    let kinds: Vec<&str> = all.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["pool.created", "address.allocated", "address.released"]);
    assert_eq!(all[1]["actor"], "cli:tester", "the actor is recorded");
    assert_eq!(c.json(&["events", "--limit", "1"])[0]["kind"], "address.released");
    assert_eq!(c.json(&["events", "--since", "1h"]).as_array().unwrap().len(), 3);
    assert_eq!(c.json(&["events", "--since", "2999-01-01T00:00:00Z"]), serde_json::json!([]));
    assert_mentions(&c.ok(&["events"]), &["KIND", "address.allocated", "cli:tester"]);
    assert_mentions(&c.err(&["events", "--since", "yesterday"]), &["yesterday", "RFC 3339"]);
}

#[test]
fn store_location_default_and_errors() {
    let c = Cli::new();
    let xdg = c.dir.path().join("xdg");
    let mut cmd = Command::cargo_bin("vipvisor").unwrap();
    cmd.env_remove("VIPVISOR_STORE").env("XDG_DATA_HOME", &xdg).args(["pool", "list"]);
    cmd.assert().success();
    assert!(xdg.join("vipvisor/vipvisor.db").exists(), "the default store is created on first use");
    assert_mentions(&c.err(&["--store", "postgres://db/x", "pool", "list"]), &["postgres://db/x", "sqlite://"]);
    assert_mentions(&c.err(&["--store", "/tmp/x.db", "pool", "list"]), &["/tmp/x.db", "sqlite://"]);
    assert_mentions(&c.err(&["pool", "list", "-o", "yaml"]), &["yaml"]);
}

// ---- Hardening (issue #10): reachable input never panics (exit 101), limits are
// explicit, addresses that can never be VIPs are refused, and output cannot be forged.

impl Cli {
    /// A refusal that is a clear error, not a panic: exit 1 (command) or 2 (arguments).
    fn refused(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        let code = out.status.code();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            matches!(code, Some(1 | 2)),
            "vipvisor {:.200?} exited {code:?} (101 is a panic): {stderr:.2000}",
            args
        );
        assert!(!stderr.contains("panicked"), "{stderr:.2000}");
        stderr
    }
}

#[test]
fn oversized_input_is_refused_and_long_cells_are_cut() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28"]);
    // A 64 KiB actor (the audit log's) is refused by its limit, not rendered into a panic.
    let actor = "a".repeat(65_536);
    assert_mentions(&c.refused(&["--actor", &actor, "pool", "list"]), &["actor", "1 to 256 bytes"]);
    // 8,000 ports on one service: over the limit of 1,024.
    let ports: Vec<String> = (1..=8000).map(|p| format!("tcp/{p}")).collect();
    let many = ports.join(",");
    assert_mentions(
        &c.refused(&["alloc", "request", "default/a", "--sharing-key", "k", "--ports", &many]),
        &["8000 ports", "at most 1024"],
    );
    // At the limit, the table cuts the cell instead of panicking; JSON has it whole.
    let max = ports[..1024].join(",");
    c.ok(&["alloc", "request", "default/a", "--sharing-key", "k", "--ports", &max]);
    let list = c.ok(&["alloc", "list"]);
    assert!(list.lines().all(|l| l.chars().count() < 600), "cells are cut: {:.300}", list);
    assert!(list.contains('…'), "{list:.300}");
    assert_eq!(c.json(&["alloc", "list"])[0]["ports"].as_array().unwrap().len(), 1024);
    // A pool of 10,000 blocks: over the limit of 1,024 blocks per pool.
    let blocks: Vec<String> = (0..10_000).map(|i| format!("2001:db8:{:x}::1", i + 1)).collect();
    let text = format!("pools:\n  - name: big\n    addresses: [{}]\n", blocks.join(", "));
    let f = c.file("big.yaml", &text);
    assert_mentions(&c.refused(&["apply", "-f", &f]), &["pool \"big\"", "at most 1024 address blocks", "10000 blocks"]);
    let text = format!("pools:\n  - name: big\n    addresses: [{}]\n", blocks[..1024].join(", "));
    let f = c.file("ok.yaml", &text);
    c.ok(&["apply", "-f", &f]);
    assert_mentions(&c.ok(&["pool", "list"]), &["big", "…"]);
    // A reservation note over 1 KiB.
    let note = "n".repeat(2000);
    assert_mentions(&c.refused(&["reserve", "add", "192.0.2.9", "--note", &note]), &["note", "at most 1024 bytes"]);
}

#[test]
fn far_future_times_and_durations_are_bounded() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28"]);
    c.ok(&["alloc", "request", "default/a"]);
    assert_mentions(
        &c.refused(&["--quarantine", "8000y", "alloc", "release", "default/a"]),
        &["8000y", "out of range", "0s to 365d"],
    );
    assert_mentions(&c.ok(&["--quarantine", "365d", "alloc", "release", "default/a"]), &["quarantined until"]);
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["speaker", "--interface", "lo", "--vip", "192.0.2.1", "--probe-timeout", "300000000000y"],
            &["--probe-timeout", "0s to 10s"],
        ),
        (
            &["speaker", "--interface", "lo", "--vip", "192.0.2.1", "--refresh-interval", "300000000000y"],
            &["--refresh-interval", "0s (off)"],
        ),
        (&["speaker", "--interface", "lo", "--vip", "192.0.2.1", "--refresh-interval", "1ms"], &["1ms", "1s to 24h"]),
        (
            &["speaker", "--interface", "lo", "--vip", "192.0.2.1", "--garp-interval", "0s"],
            &["--garp-interval", "10ms"],
        ),
        (&["speaker", "--interface", "lo", "--vip", "192.0.2.1", "--hold-time", "100y"], &["--hold-time"]),
        (&["controller", "--lease-renew", "0s"], &["--lease-renew", "100ms to 5m"]),
        (&["controller", "--lease-duration", "0s"], &["--lease-duration", "1s to 10m"]),
    ];
    for (args, needles) in cases {
        assert_mentions(&c.refused(args), needles);
    }
}

#[test]
fn addresses_that_can_never_be_vips_are_refused() {
    let c = Cli::new();
    for block in [
        "0.0.0.0/0",
        "::/0",
        "127.0.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "169.254.1.0/24",
        "fe80::1",
        "ff02::1",
        "::1",
        "::ffff:192.0.2.1",
    ] {
        let e = c.refused(&["pool", "add", "p", "--addresses", block]);
        assert_mentions(&e, &[block, "VIP"]);
        assert_mentions(&c.refused(&["reserve", "add", block]), &[block]);
        let f = c.file("p.yaml", &format!("pools:\n  - name: p\n    addresses: ['{block}']\n"));
        assert_mentions(&c.refused(&["apply", "-f", &f]), &[block]);
    }
    assert_eq!(c.json(&["pool", "list"]), serde_json::json!([]), "nothing was written");
    // IPv6: the subnet-router anycast address (interface id 0) is never handed out.
    c.ok(&["pool", "add", "v6", "--addresses", "2001:db8::/126"]);
    assert_eq!(c.json(&["alloc", "request", "default/a", "--family", "ipv6"])["addresses"][0], "2001:db8::1");
    assert_mentions(&c.refused(&["alloc", "request", "default/b", "--ip", "2001:db8::"]), &["2001:db8::", "anycast"]);
}

#[test]
fn control_characters_cannot_forge_table_rows() {
    let c = Cli::new();
    c.ok(&["reserve", "add", "192.0.2.9", "--note", "ok\n192.0.2.66  forged\u{1b}[2J\u{7}"]);
    let list = c.ok(&["reserve", "list"]);
    assert_eq!(list.lines().count(), 2, "header and one row: {list:?}");
    assert!(!list.contains('\u{1b}') && !list.contains('\u{7}'), "{list:?}");
    assert_mentions(&list, &["ok\\n192.0.2.66  forged\\u{1b}[2J\\u{7}"]);
    assert_eq!(c.json(&["reserve", "list"])[0]["note"], "ok\n192.0.2.66  forged\u{1b}[2J\u{7}", "JSON keeps it as is");
    assert_mentions(&c.refused(&["--actor", "me\u{1b}[2J", "pool", "list"]), &["actor", "control characters"]);
}

#[test]
fn operator_mistakes_are_refused() {
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28"]);
    for text in ["", "# nothing here\n", "pools: []\n"] {
        let f = c.file("empty.yaml", text);
        assert_mentions(&c.err_unchanged(&["apply", "-f", &f, "--prune"]), &["no pool", "--allow-empty"]);
    }
    let f = c.file("empty.yaml", "# nothing\n");
    assert_mentions(&c.ok(&["apply", "-f", &f, "--prune", "--allow-empty"]), &["pool web removed"]);
    c.ok(&["apply", "-f", &f]);
    assert_mentions(
        &c.refused(&["pool", "add", "s", "--addresses", "192.0.2.0/28", "--service-selector", "team=a,team=b"]),
        &["team", "twice"],
    );
    let f = c.file(
        "dup.yaml",
        "pools:\n  - name: s\n    addresses: [192.0.2.0/28]\n    service_selector: {team: a, team: b}\n",
    );
    assert_mentions(&c.refused(&["apply", "-f", &f]), &["duplicate", "team"]);
    // Hostile files: nesting, devices, FIFOs, size.
    let deep = c.file("deep.yaml", &"[".repeat(100_000));
    let start = std::time::Instant::now();
    assert_mentions(&c.refused(&["apply", "-f", &deep]), &["nested 100000 deep", "at most 32"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "refused at once: {:?}", start.elapsed());
    assert_mentions(&c.refused(&["apply", "-f", "/dev/zero"]), &["/dev/zero", "not a regular file"]);
    let fifo = c.dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    assert_mentions(&c.refused(&["apply", "-f", fifo.to_str().unwrap()]), &["not a regular file"]);
}

/// Runs a command as the unprivileged user `nobody` when we are root (root ignores file
/// modes); otherwise as ourselves.
fn as_nobody(c: &Cli, args: &[&str]) -> std::process::Output {
    let bin = assert_cmd::cargo::cargo_bin("vipvisor");
    let root = std::process::Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut cmd = if root {
        let mut x = std::process::Command::new("setpriv");
        x.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]).arg(&bin);
        x
    } else {
        std::process::Command::new(&bin)
    };
    cmd.env("VIPVISOR_STORE", c.url()).env("USER", "tester").args(args).output().unwrap()
}

#[test]
fn the_store_file_is_checked_named_and_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cli::new();
    c.ok(&["pool", "add", "web", "--addresses", "192.0.2.0/28"]);
    let db = c.dir.path().join("store/v.db");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600, "a new store is private");
    assert_eq!(mode(db.parent().unwrap()), 0o700, "and so is its new directory");
    let id = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA application_id').fetchone()[0])",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&id.stdout).trim(), "1447645270", "the store is marked as vipvisor's (VIPV)");

    // A read-only store: the listing commands work, a change is refused naming the path.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(db.parent().unwrap(), std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_nobody(&c, &["pool", "list"]);
    assert!(out.status.success(), "a read-only store can be listed: {}", String::from_utf8_lossy(&out.stderr));
    assert_mentions(&String::from_utf8_lossy(&out.stdout), &["web", "192.0.2.0/28"]);
    for args in [&["events"][..], &["alloc", "list"], &["reserve", "list"], &["pool", "show", "web"]] {
        assert!(as_nobody(&c, args).status.success(), "{args:?} on a read-only store");
    }
    let out = as_nobody(&c, &["pool", "add", "x", "--addresses", "198.51.100.0/28"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&db.display().to_string()), "the error names the store: {err}");
    assert_eq!(err.matches("unable to open").count().max(1), 1, "said once: {err}");
    std::fs::set_permissions(db.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Empty files and other programs' databases are refused, not taken over.
    let empty = c.dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let url = format!("sqlite://{}", empty.display());
    assert_mentions(&c.refused(&["--store", &url, "pool", "list"]), &["empty.db", "not a vipvisor store", "empty"]);
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "left as it was");
    let foreign = c.dir.path().join("other.db");
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table photos(id)'); c.commit()",
        ])
        .arg(&foreign)
        .status()
        .unwrap();
    assert!(made.success());
    let before = std::fs::read(&foreign).unwrap();
    let url = format!("sqlite://{}", foreign.display());
    for args in
        [&["--store", &url, "pool", "list"][..], &["--store", &url, "pool", "add", "w", "--addresses", "192.0.2.0/28"]]
    {
        assert_mentions(&c.refused(args), &["other.db", "not a vipvisor store", "photos"]);
    }
    assert!(std::fs::read(&foreign).unwrap() == before, "someone else's database is not touched");
    let dir_url = format!("sqlite://{}", c.dir.path().display());
    assert_mentions(
        &c.refused(&["--store", &dir_url, "pool", "list"]),
        &[&c.dir.path().display().to_string(), "not a regular file"],
    );

    // A relative XDG_DATA_HOME is ignored (the XDG spec): the store goes under $HOME.
    let home = c.dir.path().join("home");
    let mut cmd = Command::cargo_bin("vipvisor").unwrap();
    cmd.env_remove("VIPVISOR_STORE").env("XDG_DATA_HOME", "relative/dir").env("HOME", &home).current_dir(c.dir.path());
    cmd.args(["pool", "list"]).assert().success();
    assert!(home.join(".local/share/vipvisor/vipvisor.db").exists());
    assert!(!c.dir.path().join("relative").exists(), "nothing is created under the relative path");
}

#[test]
fn credential_files_are_never_quoted() {
    let c = Cli::new();
    let token = "vipvisor-fake-token-6b1f0c";
    let key = "LS0tLS1CRUdJTiBGQUtFIEtFWS0tLS0t";
    let broken = c.file(
        "k.yaml",
        &format!("apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    token: {token}\n    client-key-data: {key}\n   bad: [indent\n"),
    );
    let exec = c.file(
        "exec.yaml",
        &format!("apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nclusters:\n- name: k\n  cluster: {{server: 'https://127.0.0.1:1'}}\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\n      args: ['-c', 'echo {token}; echo {token} >&2; exit 3', '--key={key}']\n      interactiveMode: Never\n"),
    );
    for (file, needle) in [(&broken, "invalid YAML at line"), (&exec, "exec credential plugin sh failed")] {
        for mode in [
            &["controller", "--kubeconfig", file.as_str()][..],
            &["speaker", "--kubernetes", "--kubeconfig", file.as_str(), "--gossip-key-file", file.as_str()],
        ] {
            let out = c.cmd(mode).timeout(std::time::Duration::from_secs(20)).output().unwrap();
            let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(!out.status.success(), "{mode:?}: {all}");
            assert!(!all.contains(token) && !all.contains(key), "a credential reached an output stream: {all}");
            if mode[0] == "controller" {
                assert_mentions(&all, &[file.as_str(), needle]);
            }
        }
    }
}

/// An apiserver that accepts connections and never answers: the controller warns (at the
/// default log level) and `/healthz` fails naming the apiserver, within a lease's time.
#[test]
fn a_hanging_apiserver_is_reported_and_fails_health() {
    use std::io::{Read, Write};
    let c = Cli::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection, answering nothing (bounded: the test ends it).
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(1000).flatten() {
            held.push(s);
        }
    });
    let kc = c.file(
        "hang.yaml",
        &format!("apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nclusters:\n- name: k\n  cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: t}}\n"),
    );
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let log = c.dir.path().join("controller.log");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("vipvisor"))
        .env("VIPVISOR_STORE", c.url())
        .args(["controller", "--kubeconfig", &kc, "--lease-duration", "3s", "--lease-renew", "1s"])
        .args(["--metrics-addr", &metrics.to_string()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let healthz = || -> Option<String> {
        let mut s = std::net::TcpStream::connect(metrics).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let start = std::time::Instant::now();
    let (mut warned, mut unhealthy) = (false, None);
    while start.elapsed() < std::time::Duration::from_secs(15) && !(warned && unhealthy.is_some()) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        warned |= text.contains("WARN") && text.contains("did not answer the lease request");
        if unhealthy.is_none() {
            unhealthy = healthz()
                .filter(|h| h.starts_with("HTTP/1.0 503") || h.starts_with("HTTP/1.1 503"))
                .map(|h| (h, start.elapsed()));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(warned, "a warning about the silent apiserver: {text}");
    let (h, after) =
        unhealthy.unwrap_or_else(|| panic!("/healthz must fail while the apiserver does not answer: {text}"));
    assert!(h.contains("apiserver"), "it names the apiserver: {h}");
    eprintln!("/healthz failed {after:?} after start");
}
