//! `vipvisor serve` against a real store: every endpoint's success, each validation error
//! with its code, paging and filters, 401 without a token (before the body is looked at),
//! 403 for a viewer writing, a revoked token refused, writes audited under the token's
//! name, changes made by the CLI on the same store seen at once, and no token in the log.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const VIPVISOR: &str = env!("CARGO_BIN_EXE_vipvisor");

struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
    store: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        Server::start_with(tempfile::tempdir().unwrap(), &[])
    }

    fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let store = format!("sqlite://{}/v.db", dir.path().display());
        let log = dir.path().join("serve.log");
        let child = Command::new(VIPVISOR)
            .args(["--store", &store, "serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("VIPVISOR_LOG", "debug")
            .stdout(std::fs::File::create(dir.path().join("serve.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(a) = text.split("serving the API on http").nth(1).and_then(|r| r.split('/').nth(2)) {
                break a.to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "serve did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Server { child, addr, log, store, _dir: dir }
    }

    /// What `serve` printed on stdout (the login URL).
    fn stdout(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("serve.out")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(VIPVISOR).env("VIPVISOR_STORE", &self.store).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn token(&self, name: &str, role: &str) -> String {
        let v: Value =
            serde_json::from_str(&self.cli(&["-o", "json", "token", "create", name, "--role", role])).unwrap();
        assert_eq!((v["name"].as_str(), v["role"].as_str()), (Some(name), Some(role)), "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// One request; the status and the JSON body (Null when there is none).
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap();
        let text = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, serde_json::from_str(text).unwrap_or(Value::Null))
    }
}

#[test]
fn the_api_serves_the_store_to_tokens_by_role() {
    let s = Server::start();
    let admin = s.token("admin1", "admin");
    let viewer = s.token("viewer1", "viewer");
    let (a, v) = (Some(admin.as_str()), Some(viewer.as_str()));

    // Authentication comes first: no token, a wrong one, a viewer writing; even with a body
    // that would not validate.
    for (token, status, code) in
        [(None, 401, "unauthenticated"), (Some("vv_nope"), 401, "unauthenticated"), (v, 403, "forbidden")]
    {
        let (st, body) = s.call("POST", "/api/v1/pools", token, Some("{not json"));
        assert_eq!((st, body["code"].as_str()), (status, Some(code)), "{body}");
        assert!(body["message"].as_str().unwrap().contains("expected"), "{body}");
    }
    let (st, body) = s.call("GET", "/api/v1/whoami", v, None);
    assert_eq!((st, body), (200, json!({"name": "viewer1", "role": "viewer"})));

    // Pools, in the pools file's shape.
    assert_eq!(s.call("GET", "/api/v1/pools", v, None), (200, json!([])));
    let (st, body) = s.call(
        "POST",
        "/api/v1/pools",
        a,
        Some(r#"{"name": "web", "addresses": ["192.0.2.0/28"], "auto_assign": true}"#),
    );
    assert_eq!(st, 201, "{body}");
    let (st, body) = s.call("GET", "/api/v1/pools/web", v, None);
    assert_eq!(
        (st, body["name"].as_str(), body["addresses"][0].as_str()),
        (200, Some("web"), Some("192.0.2.0/28")),
        "{body}"
    );
    for (path, body, status, code, needle) in [
        ("/api/v1/pools", r#"{"name": "web2", "addresses": ["192.0.2.8/29"]}"#, 400, "config_conflict", "192.0.2"),
        ("/api/v1/pools", r#"{"name": "web", "addresses": ["198.51.100.0/28"]}"#, 409, "pool_exists", "web"),
        ("/api/v1/pools", r#"{"name": "x", "addresses": ["192.0.2.300/28"]}"#, 400, "invalid_value", "192.0.2.300"),
        (
            "/api/v1/pools",
            r#"{"name": "x", "addresses": ["198.51.100.0/28"], "colour": "red"}"#,
            400,
            "invalid_value",
            "colour",
        ),
        ("/api/v1/pools", "{not json", 400, "invalid_value", "pool body"),
        ("/api/v1/allocations", r#"{"service": "no-slash"}"#, 400, "invalid_value", "namespace/name"),
        ("/api/v1/allocations", r#"{"service": "default/x", "pool": "nope"}"#, 404, "unknown_pool", "nope"),
    ] {
        let (st, b) = s.call("POST", path, a, Some(body));
        assert_eq!((st, b["code"].as_str()), (status, Some(code)), "{body}: {b}");
        assert!(b["message"].as_str().unwrap().contains(needle), "{body}: {b}");
    }
    let (st, b) = s.call("GET", "/api/v1/pools/Bad_Name", v, None);
    assert_eq!((st, b["code"].as_str()), (400, Some("invalid_value")), "{b}");
    let (st, b) = s.call("GET", "/api/v1/pools/absent", v, None);
    assert_eq!((st, b["code"].as_str()), (404, Some("unknown_pool")), "{b}");

    // Allocations: through the API and through the CLI on the same store.
    for svc in ["default/a", "default/b", "other/c"] {
        let (st, b) = s.call("POST", "/api/v1/allocations", a, Some(&json!({"service": svc}).to_string()));
        assert_eq!(st, 200, "{b}");
    }
    s.cli(&["alloc", "request", "other/d"]);
    let (st, page) = s.call("GET", "/api/v1/allocations?limit=2&offset=1", v, None);
    assert_eq!((st, page["total"].as_u64(), page["offset"].as_u64()), (200, Some(4), Some(1)), "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (_, other) = s.call("GET", "/api/v1/allocations?namespace=other", v, None);
    let names: Vec<&str> = other["items"].as_array().unwrap().iter().map(|i| i["service"].as_str().unwrap()).collect();
    assert_eq!(names, ["other/c", "other/d"], "the CLI's allocation is seen at once");
    let d_ip = other["items"][1]["addresses"][0].as_str().unwrap().to_string();
    let (_, one) = s.call("GET", &format!("/api/v1/allocations?address={d_ip}"), v, None);
    assert_eq!(one["total"], 1, "{one}");
    for (q, needle) in [
        ("limit=0", "invalid limit 0"),
        ("limit=20000", "expected 1 to 10000"),
        ("address=1.2.3", "\"1.2.3\""),
        ("colour=red", "colour"),
    ] {
        let (st, b) = s.call("GET", &format!("/api/v1/allocations?{q}"), v, None);
        assert_eq!((st, b["code"].as_str()), (400, Some("invalid_value")), "{q}: {b}");
        assert!(b["message"].as_str().unwrap().contains(needle), "{q}: {b}");
    }
    let (st, b) = s.call("DELETE", "/api/v1/allocations/default/a", v, None);
    assert_eq!(st, 403, "{b}");
    let (st, b) = s.call("DELETE", "/api/v1/allocations/default/a", a, None);
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["released"].as_array().map(Vec::len), Some(1), "{b}");
    let (st, b) = s.call("DELETE", "/api/v1/pools/web", a, None);
    assert_eq!((st, b["code"].as_str()), (409, Some("would_strand")), "{b}");

    // Events: the writes are the tokens', not the server's.
    let (st, ev) = s.call("GET", "/api/v1/events?limit=100", v, None);
    assert_eq!(st, 200);
    let ev = ev.as_array().unwrap();
    assert!(ev.iter().any(|e| e["kind"] == "pool.created" && e["actor"] == "token:admin1"), "{ev:?}");
    assert!(ev.iter().any(|e| e["kind"] == "address.released" && e["actor"] == "token:admin1"), "{ev:?}");
    let (st, b) = s.call("GET", "/api/v1/events?since=yesterday", v, None);
    assert_eq!((st, b["code"].as_str()), (400, Some("invalid_value")), "{b}");

    // Unknown routes and the unauthenticated health check.
    let (st, b) = s.call("GET", "/api/v1/nothing", v, None);
    assert_eq!((st, b["code"].as_str()), (404, Some("not_found")), "{b}");
    assert_eq!(s.call("GET", "/healthz", None, None).0, 200);
    // The OpenAPI document needs no token, and is the committed one.
    let (st, doc) = s.call("GET", "/api/v1/openapi.json", None, None);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((st, &doc), (200, &committed));

    // Revoked: refused from the next request on; listing never shows a secret.
    let list = s.cli(&["-o", "json", "token", "list"]);
    assert!(list.contains("viewer1") && !list.contains(&viewer) && !list.contains(&admin), "{list}");
    s.cli(&["token", "revoke", "viewer1"]);
    let (st, b) = s.call("GET", "/api/v1/pools", v, None);
    assert_eq!((st, b["code"].as_str()), (401, Some("unauthenticated")), "{b}");
    let out =
        Command::new(VIPVISOR).env("VIPVISOR_STORE", &s.store).args(["token", "revoke", "viewer1"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no token named \"viewer1\""));

    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(!log.contains(&admin) && !log.contains(&viewer) && !log.contains("vv_nope"), "a token in the log: {log}");
}

impl Server {
    /// Opens the change feed; returns the stream once the response headers are in.
    fn feed(&self, token: &str, last_event_id: Option<i64>) -> (TcpStream, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut req = format!("GET /api/v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n");
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut got = String::new();
        read_until(&mut s, &mut got, "\r\n\r\n", Duration::from_secs(5));
        (s, got)
    }
}

/// Reads from `s` into `got` until it contains `needle` or `limit` passes; whether it did.
fn read_until(s: &mut TcpStream, got: &mut String, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while !got.contains(needle) {
        if start.elapsed() > limit {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) => return got.contains(needle),
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{e}"),
        }
    }
    true
}

/// The change feed: a CLI allocation on the same store reaches a connected client within
/// 1 s; a client that reconnects with Last-Event-ID gets what it missed; no token, no feed.
#[test]
fn changes_by_another_process_reach_the_feed_within_a_second() {
    let s = Server::start();
    let viewer = s.token("feed", "viewer");
    s.cli(&["pool", "add", "web", "--addresses", "198.51.100.0/28"]);
    let (st, _) = s.call("GET", "/api/v1/events/stream", None, None);
    assert_eq!(st, 401);
    let (mut feed, head) = s.feed(&viewer, None);
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    let mut got = String::new();
    let sent = Instant::now();
    s.cli(&["alloc", "request", "default/live"]);
    assert!(
        read_until(&mut feed, &mut got, "event: address.allocated", Duration::from_secs(1)),
        "no address.allocated within 1 s of the CLI's allocation: {got:?}"
    );
    eprintln!("CLI allocation → feed event: {:?} (the CLI process included)", sent.elapsed());
    assert!(
        got.contains("default/live") && !got.contains("pool.created"),
        "only what happened after connecting: {got}"
    );
    let id: i64 = got.split("id: ").nth(1).and_then(|r| r.lines().next()).and_then(|l| l.trim().parse().ok()).unwrap();
    drop(feed);
    s.cli(&["alloc", "release", "default/live"]);
    // What came with the response headers counts too.
    let (mut again, mut missed) = s.feed(&viewer, Some(id));
    assert!(read_until(&mut again, &mut missed, "event: address.released", Duration::from_secs(2)), "{missed}");
    assert!(!missed.contains("event: address.allocated"), "resumed after {id}: {missed}");
}

/// `serve` prints a login URL with a one-time code (on stdout, not in the log); the code
/// buys an admin session once, and is refused after that.
#[test]
fn the_printed_login_code_works_once() {
    let s = Server::start();
    let start = Instant::now();
    while !s.stdout().contains("code=") {
        assert!(start.elapsed() < Duration::from_secs(5), "no login URL: {}", s.stdout());
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = s.stdout();
    assert!(out.contains(&format!("http://{}/login?code=", s.addr)), "{out}");
    let code = out.split("code=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let (st, b) = s.call("POST", "/api/v1/login", None, Some("{}"));
    assert_eq!((st, b["code"].as_str()), (400, Some("invalid_value")), "{b}");
    let (st, b) = s.call("POST", "/api/v1/login", None, Some(&json!({"code": "guess"}).to_string()));
    assert_eq!((st, b["code"].as_str()), (401, Some("unauthenticated")), "{b}");
    let (st, b) = s.call("POST", "/api/v1/login", None, Some(&json!({"code": code}).to_string()));
    assert_eq!(st, 200, "{b}");
    let session = b["token"].as_str().unwrap().to_string();
    let (st, b) =
        s.call("POST", "/api/v1/pools", Some(&session), Some(r#"{"name": "web", "addresses": ["203.0.113.0/28"]}"#));
    assert_eq!(st, 201, "the session is an admin: {b}");
    let (st, _) = s.call("POST", "/api/v1/login", None, Some(&json!({"code": code}).to_string()));
    assert_eq!(st, 401, "the code works once");
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(!log.contains(&code) && !log.contains(&session), "{log}");
}

/// `--tls-cert`/`--tls-key`: the API over TLS (a self-signed certificate made here with
/// openssl); plain HTTP to it gets nothing; a bad key file is refused by name, its
/// contents never shown.
#[test]
fn tls_from_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=vipvisor-test",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    // A key file that is not a key: refused naming the file, without its contents.
    let bogus = dir.path().join("bogus.pem");
    std::fs::write(&bogus, "-----BEGIN NOTHING-----\nc2VjcmV0LXNlY3JldA==\n-----END NOTHING-----\n").unwrap();
    let out = Command::new(VIPVISOR)
        .args([
            "--store",
            &format!("sqlite://{}/x.db", dir.path().display()),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
        ])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&bogus)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--tls-key") && e.contains("bogus.pem"), "{e}");
    assert!(!e.contains("c2VjcmV0") && !e.contains("NOTHING"), "the file's contents are not shown: {e}");

    let (c, k) = (cert.display().to_string(), key.display().to_string());
    let s = Server::start_with(dir, &["--tls-cert", &c, "--tls-key", &k]);
    let token = s.token("tls", "viewer");
    let curl = |scheme: &str| {
        Command::new("curl")
            .args(["-s", "--max-time", "5", "--cacert", &c, "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{scheme}://{}/api/v1/whoami", s.addr))
            .output()
            .unwrap()
    };
    let ok = curl("https");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&ok.stdout).unwrap(), json!({"name": "tls", "role": "viewer"}));
    let plain = curl("http");
    assert!(plain.stdout.is_empty() || !plain.status.success(), "plain HTTP gets no answer from the TLS port");
    assert!(s.stdout().contains(&format!("https://{}/login?code=", s.addr)), "{}", s.stdout());
}

/// The read models the web UI shows: a pool's page (free ranges, address map, history),
/// pool edits and dry runs with the error on its field, who announces each VIP and the
/// failover history (written to the store as the controller and recording speakers do),
/// a VIP's page with its sightings and split-brain verdict, why a request gets no
/// address, the grants; and the UI's own files.
#[test]
fn the_read_models_of_the_ui() {
    let s = Server::start();
    let admin = s.token("ui-admin", "admin");
    let a = Some(admin.as_str());
    let pool = |body: Value| body.to_string();
    let (st, _) =
        s.call("POST", "/api/v1/pools", a, Some(&pool(json!({"name": "blue", "addresses": ["198.51.100.0/29"]}))));
    assert_eq!(st, 201);

    // A dry run checks against the store and writes nothing; its error names the field.
    let overlap = pool(json!({"name": "green", "addresses": ["198.51.100.4/30"]}));
    let (st, body) = s.call("POST", "/api/v1/pools?dry_run=true", a, Some(&overlap));
    assert_eq!(
        (st, body["code"].as_str(), body["field"].as_str()),
        (400, Some("config_conflict"), Some("addresses")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("overlaps pool \"blue\""), "{body}");
    let fine = pool(json!({"name": "green", "addresses": ["203.0.113.0/30"]}));
    let (st, body) = s.call("POST", "/api/v1/pools?dry_run=true", a, Some(&fine));
    assert_eq!((st, body["changed"].as_bool()), (200, Some(true)), "{body}");
    assert_eq!(s.call("GET", "/api/v1/pools/green", a, None).0, 404, "a dry run writes nothing");
    let (st, body) =
        s.call("POST", "/api/v1/pools", a, Some(&pool(json!({"name": "Bad!", "addresses": ["203.0.113.0/30"]}))));
    assert_eq!((st, body["field"].as_str()), (400, Some("name")), "{body}");
    let (st, body) = s.call("POST", "/api/v1/pools", a, Some(&pool(json!({"name": "x", "addresses": ["nope"]}))));
    assert_eq!((st, body["field"].as_str()), (400, Some("addresses")), "{body}");
    let (st, body) = s.call("POST", "/api/v1/pools?dry_run=maybe", a, Some(&fine));
    assert_eq!((st, body["code"].as_str()), (400, Some("invalid_value")), "{body}");

    // An edit (PUT): same name as the path, allocations it no longer covers refuse it.
    s.cli(&["alloc", "request", "web/front", "--pool", "blue", "--ip", "198.51.100.6"]);
    let shrink = pool(json!({"name": "blue", "addresses": ["198.51.100.0/30"]}));
    let (st, body) = s.call("PUT", "/api/v1/pools/blue?dry_run=true", a, Some(&shrink));
    assert_eq!((st, body["code"].as_str()), (409, Some("would_strand")), "{body}");
    let (st, body) = s.call("PUT", "/api/v1/pools/green", a, Some(&shrink));
    assert_eq!((st, body["field"].as_str()), (400, Some("name")), "{body}");
    let grow = pool(json!({"name": "blue", "addresses": ["198.51.100.0/28"], "avoid_buggy_ips": true}));
    let (st, body) = s.call("PUT", "/api/v1/pools/blue", a, Some(&grow));
    assert_eq!((st, body["pools"][0]["action"].as_str()), (200, Some("updated")), "{body}");

    // The pool's page.
    s.cli(&["reserve", "add", "198.51.100.1", "--note", "gateway"]);
    let (st, d) = s.call("GET", "/api/v1/pools/blue/detail", a, None);
    assert_eq!(st, 200, "{d}");
    assert_eq!(
        d["free"],
        json!([{"first": "198.51.100.2", "last": "198.51.100.5", "count": 4}, {"first": "198.51.100.7", "last": "198.51.100.15", "count": 9}]),
        "{d}"
    );
    let cells = d["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 16);
    let state = |ip: &str| {
        cells
            .iter()
            .find(|c| c["address"] == ip)
            .map(|c| (c["state"].as_str().unwrap().to_string(), c["note"].as_str().unwrap().to_string()))
    };
    assert_eq!(state("198.51.100.0"), Some(("excluded".into(), String::new())));
    assert_eq!(state("198.51.100.1"), Some(("reserved".into(), "gateway".into())));
    assert_eq!(state("198.51.100.6"), Some(("allocated".into(), "web/front".into())));
    assert_eq!(state("198.51.100.7"), Some(("free".into(), String::new())));
    assert_eq!(d["reservations"][0]["block"], "198.51.100.1");
    assert_eq!(d["allocations"][0]["service"], "web/front");
    let h = d["history"].as_array().unwrap();
    assert_eq!(
        (h.first().map(|p| p["used"].clone()), h.last().map(|p| p["used"].clone())),
        (Some(json!(0)), Some(json!(1))),
        "{d}"
    );
    assert_eq!(s.call("GET", "/api/v1/pools/nope/detail", a, None).0, 404);

    // Owners, as the controller or a recording speaker writes them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vip: std::net::IpAddr = "198.51.100.6".parse().unwrap();
    rt.block_on(async {
        let app = vipvisor_api::App::open(&s.store, "test", Duration::ZERO).await.unwrap();
        let claim = |node: &str, mac: &str| {
            std::collections::BTreeMap::from([(
                vip,
                vipvisor_api::OwnerClaim {
                    address: vip,
                    node: node.into(),
                    interface: "eth0".into(),
                    mac: mac.into(),
                    source: "group",
                },
            )])
        };
        app.set_owners("group", &claim("n1", "02:00:00:00:00:11"), vipvisor_api::OwnerScope::Node("n1")).await.unwrap();
        app.saw(vip, "02:00:00:00:00:11", "n2", "eth0", 3, (Duration::ZERO, Duration::ZERO)).await.unwrap();
        // n1 stops by itself, n2 takes over a little later: a failover with a known gap.
        app.set_owners("group", &Default::default(), vipvisor_api::OwnerScope::Node("n1")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        app.set_owners("group", &claim("n2", "02:00:00:00:00:12"), vipvisor_api::OwnerScope::Node("n2")).await.unwrap();
        app.saw(vip, "02:00:00:00:00:12", "n3", "eth0", 1, (Duration::ZERO, Duration::ZERO)).await.unwrap();
        app.close().await;
    });
    let (st, o) = s.call("GET", "/api/v1/owners", a, None);
    assert_eq!((st, o.as_array().map(Vec::len)), (200, Some(1)), "{o}");
    assert_eq!(
        (o[0]["node"].as_str(), o[0]["interface"].as_str(), o[0]["end_ms"].clone()),
        (Some("n2"), Some("eth0"), Value::Null)
    );
    let (_, h) = s.call("GET", "/api/v1/ownership", a, None);
    let f = &h["failovers"][0];
    assert_eq!((f["from"].as_str(), f["to"].as_str()), (Some("n1"), Some("n2")), "{h}");
    assert!(
        f["gap_ms"].as_i64().is_some_and(|g| g >= 30),
        "the gap is measured when the old owner said it stopped: {h}"
    );
    assert_eq!(h["spans"][0]["ended"], "released");
    let (_, v) = s.call("GET", "/api/v1/vips/198.51.100.6", a, None);
    assert_eq!(
        (v["state"].as_str(), v["pool"].as_str(), v["owner"]["node"].as_str()),
        (Some("allocated"), Some("blue"), Some("n2")),
        "{v}"
    );
    assert_eq!(v["allocations"][0]["service"], "web/front");
    assert_eq!(v["seen"].as_array().map(Vec::len), Some(2));
    assert!(v["split_brain"].is_null(), "the old owner's MAC, seen before the takeover, is history: {v}");
    // A stranger answering for it is an alarm (past the takeover's 1 s grace).
    std::thread::sleep(Duration::from_millis(1100));
    rt.block_on(async {
        let app = vipvisor_api::App::open(&s.store, "test", Duration::ZERO).await.unwrap();
        app.saw(vip, "02:00:00:00:00:99", "n3", "eth0", 1, (Duration::ZERO, Duration::ZERO)).await.unwrap();
        app.close().await;
    });
    let (_, v) = s.call("GET", "/api/v1/vips/198.51.100.6", a, None);
    assert!(v["split_brain"].as_str().is_some_and(|m| m.contains("02:00:00:00:00:99")), "{v}");
    let (_, d) = s.call("GET", "/api/v1/pools/blue/detail", a, None);
    assert!(
        d["cells"].as_array().unwrap().iter().any(|c| c["address"] == "198.51.100.6" && c["state"] == "conflict"),
        "{d}"
    );
    let (st, body) = s.call("GET", "/api/v1/vips/not-an-ip", a, None);
    assert_eq!((st, body["code"].as_str()), (400, Some("invalid_value")));
    let (st, body) = s.call("GET", "/api/v1/ownership?limit=0", a, None);
    assert_eq!((st, body["code"].as_str()), (400, Some("invalid_value")));
    // The changes reached the audit log (and so the stream).
    let (_, ev) = s.call("GET", "/api/v1/events", a, None);
    let kinds: Vec<&str> = ev.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"owner.changed") && kinds.contains(&"owner.released"), "{kinds:?}");

    // Why a request gets no address, per pool (a dry run).
    let (st, p) = s.call("POST", "/api/v1/explain", a, Some(r#"{"service": "web/x", "pool": "blue"}"#));
    assert_eq!((st, p["code"].clone()), (200, Value::Null), "{p}");
    assert_eq!(p["would_get"], json!(["198.51.100.2"]));
    let (_, p) = s.call("POST", "/api/v1/explain", a, Some(r#"{"service": "web/x", "addresses": ["198.51.100.6"]}"#));
    assert_eq!((p["code"].as_str(), p["pools"][0]["pool"].as_str()), (Some("address_in_use"), Some("blue")), "{p}");
    assert!(p["pools"][0]["reason"].as_str().unwrap().contains("web/front"), "says who holds it: {p}");
    let (_, p) = s.call("POST", "/api/v1/explain", a, Some(r#"{"service": "web/x", "family": "ipv6"}"#));
    assert_eq!(p["code"].as_str(), Some("no_eligible_pool"), "{p}");
    assert!(p["pools"].as_array().unwrap().iter().any(|r| r["pool"] == "blue"), "{p}");
    let (_, allocs) = s.call("GET", "/api/v1/allocations", a, None);
    assert_eq!(allocs["total"], 1, "explaining allocates nothing");
    assert_eq!(s.call("GET", "/api/v1/pending", a, None), (200, json!([])), "serve alone knows no Services");
    assert_eq!(s.call("GET", "/api/v1/grants", a, None), (200, json!([])));
    let (st, body) = s.call("POST", "/api/v1/explain", a, Some(r#"{"service": "nope"}"#));
    assert_eq!((st, body["code"].as_str()), (400, Some("invalid_value")));

    // The web UI's files: every path that is not the API is the UI (it routes in the
    // browser), with a content security policy; the API's unknown paths stay JSON 404s.
    let (st, body) = s.call("GET", "/api/v1/nope", a, None);
    assert_eq!((st, body["code"].as_str()), (404, Some("not_found")));
    let page = |path: &str| {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    // The server's own metrics: requests by route pattern, method and status.
    let m = page("/metrics");
    assert!(
        m.contains(r#"vipvisor_http_requests_total{route="/api/v1/pools/{name}/detail",method="GET",status="200"}"#)
            && m.contains(r#"vipvisor_http_requests_total{route="/api/v1/pools",method="POST",status="201"}"#)
            && m.contains("vipvisor_http_request_duration_seconds_bucket")
            && m.contains("vipvisor_http_event_streams"),
        "{m}"
    );
    if vipvisor_server::has_ui() {
        for path in ["/", "/pools/blue", "/login?code=x"] {
            let r = page(path);
            assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
            assert!(
                r.contains("content-security-policy: default-src 'self'") && r.contains(r#"<div id="app">"#),
                "{path}: {r}"
            );
        }
    } else {
        assert!(std::env::var_os("CI").is_none(), "CI builds the UI (npm --prefix ui run build) before the binary");
        eprintln!("SKIPPED the UI files check: this binary was built without ui/dist");
        assert!(page("/").contains("built without its web UI"));
    }
}

/// Users' Kubernetes tokens never cross a network in clear text: the controller refuses
/// `--serve-auth kubernetes` beyond loopback without TLS, before it does anything else.
#[test]
fn kubernetes_tokens_beyond_loopback_need_tls() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(VIPVISOR)
        .args(["--store", &format!("sqlite://{}/v.db", dir.path().display()), "controller"])
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "--serve", "0.0.0.0:19499", "--serve-auth", "kubernetes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--serve-auth kubernetes on 0.0.0.0:19499 without TLS") && err.contains("--serve-tls-cert"),
        "{err}"
    );
    let out = Command::new(VIPVISOR).args(["controller", "--serve-auth", "kubernetes"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--serve"), "--serve-auth needs --serve");
}
