//! Fuzz the frame parser and the engine's frame handling: no input may panic.
//! Run: `cd src-core/l2 && RUSTC_BOOTSTRAP=1 cargo fuzz run wire_parse -- -max_total_time=60`
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vipvisor_l2::engine::{Engine, Iface, Timing};
use vipvisor_l2::metrics::Metrics;
use vipvisor_l2::wire::{self, Mac};

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse(data);
    let mut e = Engine::new(
        vec![Iface { name: "fuzz0".into(), mac: Mac([2, 0, 0, 0, 0, 0x11]) }],
        Timing { probe_timeout: std::time::Duration::ZERO, ..Timing::default() },
        Metrics::new(),
    );
    let now = Instant::now();
    e.add_vip("192.0.2.100".parse().unwrap(), 0, now, false);
    e.add_vip("2001:db8::100".parse().unwrap(), 0, now, false);
    let _ = e.on_frame(0, data, now);
});
