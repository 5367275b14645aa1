//! Store and CLI throughput/latency (issue #2):
//! - durable allocations through the store, one process (target ≥ 2,000/s);
//! - a full `vipvisor alloc request` (process start to exit) on a store holding 10,000
//!   allocations: median and p99.
//!
//! Run: `cargo bench -p vipvisor --bench store` (BENCH_CLI_RUNS=N to change the 200 runs).
#![allow(clippy::unwrap_used)]

mod common;
use common::pct;

use std::process::Command;
use std::time::{Duration, Instant};

use vipvisor_model::{AllocRequest, FamilyRequest, Pool, PoolOptions, Timestamp};
use vipvisor_store::Store;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/bench.db", dir.path().display());
    rt.block_on(async {
        let store = Store::open(&url).await.unwrap();
        let pool = Pool::new("big".parse().unwrap(), vec!["2001:db8::/104".parse().unwrap()], PoolOptions::default())
            .unwrap();
        store.add_pool(pool, Timestamp::now()).await.unwrap();
        let n = 10_000;
        let mut times = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let mut r = AllocRequest::new(format!("bench/s{i}").parse().unwrap());
            r.family = Some(FamilyRequest::Ipv6);
            let t = Instant::now();
            store.allocate(&r, Timestamp::now(), Duration::from_secs(60)).await.unwrap();
            times.push(t.elapsed());
        }
        let total = start.elapsed();
        times.sort();
        println!(
            "store_durable_allocations: {n} allocations (synchronous=FULL, WAL) in {:.2?}: {:.0}/s; per allocation median {:.0?}, p99 {:.0?}",
            total,
            n as f64 / total.as_secs_f64(),
            pct(&times, 0.5),
            pct(&times, 0.99)
        );
        store.close().await;
    });
    let runs: usize = std::env::var("BENCH_CLI_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let bin = env!("CARGO_BIN_EXE_vipvisor");
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["--store", &url, "alloc", "request", &format!("cli/s{i}"), "--family", "ipv6", "-o", "json"])
            .output()
            .unwrap();
        times.push(t.elapsed());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    times.sort();
    println!(
        "cli_alloc_request: {runs} runs of `vipvisor alloc request` on a store with 10,000+ allocations: median {:.1?}, p99 {:.1?}, min {:.1?}, max {:.1?}",
        pct(&times, 0.5),
        pct(&times, 0.99),
        times[0],
        times[times.len() - 1]
    );
}
