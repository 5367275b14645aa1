//! Concurrency and crash safety of the store, with real OS processes on one database file.
//!
//! The worker processes are this test binary itself, re-run with `--ignored --exact
//! child_allocator` and its job in environment variables: the worker is not a test of its
//! own (run alone it returns at once and says so).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vipvisor_ipam::IpamError;
use vipvisor_model::{AllocRequest, FamilyRequest, Pool, PoolOptions, Timestamp};
use vipvisor_store::{Store, StoreError};

const CHILD_DB: &str = "VIPVISOR_TEST_CHILD_DB";
const CHILD_PREFIX: &str = "VIPVISOR_TEST_CHILD_PREFIX";
const CHILD_COUNT: &str = "VIPVISOR_TEST_CHILD_COUNT";

/// The worker: allocates `ns/PREFIX-i` for i in 0..COUNT (IPv6), printing `ACK service
/// address` after each commit, `EXHAUSTED service` on exhaustion, and exiting 3 on any
/// other error.
#[test]
#[ignore = "worker process of the durability tests, started by them"]
fn child_allocator() {
    let (Ok(db), Ok(prefix), Ok(count)) =
        (std::env::var(CHILD_DB), std::env::var(CHILD_PREFIX), std::env::var(CHILD_COUNT))
    else {
        eprintln!("child_allocator: not started by a durability test; nothing to do");
        return;
    };
    let count: usize = count.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(&db).await.unwrap().with_actor(format!("worker:{prefix}"));
        let mut out = std::io::stdout().lock();
        for i in 0..count {
            let mut req = AllocRequest::new(format!("ns/{prefix}-{i}").parse().unwrap());
            req.family = Some(FamilyRequest::Ipv6);
            match store.allocate(&req, Timestamp::now(), Duration::from_secs(60)).await {
                Ok(o) => {
                    use std::io::Write;
                    writeln!(out, "ACK {} {}", req.service, o.allocation.addresses[0]).unwrap();
                    out.flush().unwrap();
                }
                Err(StoreError::Ipam(IpamError::Exhausted { .. })) => {
                    use std::io::Write;
                    writeln!(out, "EXHAUSTED {}", req.service).unwrap();
                    out.flush().unwrap();
                }
                Err(e) => {
                    eprintln!("worker error: {e}");
                    std::process::exit(3);
                }
            }
        }
    });
}

fn spawn_worker(db: &str, prefix: &str, count: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_allocator", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, db)
        .env(CHILD_PREFIX, prefix)
        .env(CHILD_COUNT, count.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Complete `ACK`/`EXHAUSTED` lines of a worker's output (a line cut by a kill is ignored).
fn parse_output(text: &str) -> (Vec<(String, IpAddr)>, usize) {
    let mut acks = Vec::new();
    let mut exhausted = 0;
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        // libtest may print "test child_allocator ... " on the same line as the first output.
        let start = ["ACK ", "EXHAUSTED "].iter().filter_map(|m| line.find(m)).min().unwrap_or(0);
        let mut parts = line[start..].split_whitespace();
        match parts.next() {
            Some("ACK") => {
                let s = parts.next().unwrap().to_string();
                let a = parts.next().unwrap().parse().unwrap();
                acks.push((s, a));
            }
            Some("EXHAUSTED") => exhausted += 1,
            _ => {}
        }
    }
    (acks, exhausted)
}

async fn setup(db: &str, block: &str) -> Store {
    let store = Store::open(db).await.unwrap();
    let pool = Pool::new("big".parse().unwrap(), vec![block.parse().unwrap()], PoolOptions::default()).unwrap();
    store.add_pool(pool, Timestamp::now()).await.unwrap();
    store
}

/// Checks the database against what workers acknowledged: every ACK present with its
/// address, no address held twice, SQLite's integrity and foreign-key checks clean.
async fn verify(store: &Store, acked: &[(String, IpAddr)]) -> usize {
    let ipam = store.snapshot().await.unwrap();
    let mut by_addr: HashMap<IpAddr, String> = HashMap::new();
    for a in ipam.allocations() {
        for ip in &a.addresses {
            if let Some(other) = by_addr.insert(*ip, a.service.to_string()) {
                panic!("{ip} is held by both {other} and {}: a double allocation", a.service);
            }
        }
    }
    for (svc, addr) in acked {
        let held = ipam.allocation(&svc.parse().unwrap()).map(|a| a.addresses.clone());
        assert_eq!(held, Some(vec![*addr]), "{svc} was acknowledged with {addr}, so the store must still hold it");
    }
    let problems = store.integrity_check().await.unwrap();
    assert!(problems.is_empty(), "integrity_check / foreign_key_check found {problems:?}");
    by_addr.len()
}

#[tokio::test(flavor = "current_thread")]
async fn four_processes_allocate_concurrently_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/v.db", dir.path().display());
    // 1,024 addresses (1,023 usable: not the subnet-router anycast 2001:db8:c::) for
    // 4 × 250 = 1,000 services: no exhaustion expected.
    let store = setup(&db, "2001:db8:c::/118").await;
    let started = Instant::now();
    let workers: Vec<Child> = (0..4).map(|w| spawn_worker(&db, &format!("w{w}"), 250)).collect();
    let mut acked = Vec::new();
    for mut c in workers {
        let mut text = String::new();
        c.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = c.wait().unwrap();
        assert!(status.success(), "worker failed ({status}): {err}");
        let (a, exhausted) = parse_output(&text);
        assert_eq!(exhausted, 0, "1,023 addresses cannot run out for 1,000 services");
        acked.extend(a);
    }
    assert_eq!(acked.len(), 1000, "every one of the 4 × 250 requests is acknowledged");
    let distinct = verify(&store, &acked).await;
    assert_eq!(distinct, 1000, "1,000 services hold 1,000 distinct addresses");
    eprintln!("4 processes × 250 allocations: {:?}", started.elapsed());
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_exhaustion_is_the_only_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/v.db", dir.path().display());
    // 64 addresses, 63 usable: 2001:db8:d:: is its /64's subnet-router anycast address.
    let store = setup(&db, "2001:db8:d::/122").await;
    let workers: Vec<Child> = (0..4).map(|w| spawn_worker(&db, &format!("x{w}"), 30)).collect();
    let (mut acked, mut exhausted) = (Vec::new(), 0);
    for mut c in workers {
        let mut text = String::new();
        c.stdout.take().unwrap().read_to_string(&mut text).unwrap();
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(c.wait().unwrap().success(), "only exhaustion may stop a worker: {err}");
        let (a, e) = parse_output(&text);
        acked.extend(a);
        exhausted += e;
    }
    assert_eq!(acked.len(), 63, "all 63 usable addresses are handed out");
    assert_eq!(exhausted, 120 - 63, "the other requests see 'pool exhausted'");
    verify(&store, &acked).await;
}

/// A tiny deterministic generator, seeded from the clock and printed, so a failure can be
/// replayed with VIPVISOR_CRASH_SEED.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sigkill_at_random_moments_loses_no_acknowledged_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/v.db", dir.path().display());
    let store = setup(&db, "2001:db8:e::/112").await;
    let seed = std::env::var("VIPVISOR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ Timestamp::now().0 as u64);
    eprintln!("crash test seed: {seed} (replay with VIPVISOR_CRASH_SEED={seed})");
    let mut rng = Lcg(seed);
    let mut acked: Vec<(String, IpAddr)> = Vec::new();
    let mut killed_mid_run = 0;
    let rounds = 25;
    for round in 0..rounds {
        let mut child = spawn_worker(&db, &format!("r{round}"), 100_000);
        let stdout = child.stdout.take().unwrap();
        // Read in a thread so the pipe never fills while we wait to kill.
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                text.push_str(&line);
                line.clear();
            }
            text
        });
        let wait_ms = 30 + rng.next() % 400;
        std::thread::sleep(Duration::from_millis(wait_ms));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let text = reader.join().unwrap();
        let (a, _) = parse_output(&text);
        acked.extend(a);
        // After every kill: everything acknowledged so far is there, exactly once.
        let fresh = Store::open(&db).await.unwrap();
        verify(&fresh, &acked).await;
        fresh.close().await;
    }
    assert_eq!(killed_mid_run, rounds, "every round must be killed while still allocating");
    assert!(acked.len() > rounds, "the workers must have made progress ({} acks)", acked.len());
    let per_round: BTreeMap<String, usize> = acked.iter().fold(BTreeMap::new(), |mut m, (s, _)| {
        *m.entry(s.split('-').next().unwrap().to_string()).or_default() += 1;
        m
    });
    eprintln!("{} acknowledged allocations over {rounds} kills: {per_round:?}", acked.len());
    verify(&store, &acked).await;
}
