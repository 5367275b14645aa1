//! Pure pick of a free address at 1,000 and 100,000 used addresses: the cost must be flat
//! (issue #2: the larger within 2× of the smaller). The pool is fragmented first (every
//! tenth service released), so the free set has thousands of intervals, not one.
//!
//! Run: `cargo bench -p vipvisor-ipam --bench ipam`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vipvisor_ipam::Ipam;
use vipvisor_model::{AllocRequest, FamilyRequest, Pool, PoolOptions, ServiceKey, Timestamp};

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn filled(used: usize) -> Ipam {
    let pool =
        Pool::new("big".parse().unwrap(), vec!["2001:db8::/96".parse().unwrap()], PoolOptions::default()).unwrap();
    let mut m = Ipam::new(vec![pool], vec![]);
    let extra = used / 9 + 1;
    for i in 0..used + extra {
        let mut r = AllocRequest::new(format!("ns/s{i}").parse().unwrap());
        r.family = Some(FamilyRequest::Ipv6);
        m.allocate(&r, NOW, Duration::ZERO).unwrap();
    }
    // Release every tenth service until `used` remain: a fragmented free set.
    let mut i = 0;
    let mut left = used + extra;
    while left > used {
        let key: ServiceKey = format!("ns/s{i}").parse().unwrap();
        m.release(&key, None, NOW, Duration::ZERO).unwrap();
        left -= 1;
        i += 10;
    }
    m
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipam_pick_free_address");
    for used in [1_000usize, 100_000] {
        let mut m = filled(used);
        let mut r = AllocRequest::new("bench/new".parse().unwrap());
        r.family = Some(FamilyRequest::Ipv6);
        g.bench_with_input(BenchmarkId::from_parameter(used), &used, |b, _| {
            b.iter(|| {
                let o = m.allocate(black_box(&r), NOW, Duration::ZERO).unwrap();
                m.release(&r.service, None, NOW, Duration::ZERO).unwrap();
                black_box(o)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
