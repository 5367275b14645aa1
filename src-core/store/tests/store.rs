//! Store tests on real SQLite databases (one per test, made by `#[sqlx::test]`).
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use sqlx::SqlitePool;
use vipvisor_ipam::{Change, IpamError};
use vipvisor_model::config::Config as Desired;
use vipvisor_model::{AllocRequest, Pool, PoolOptions, Reservation, Timestamp};
use vipvisor_store::{Store, StoreError, MIGRATOR};

const HOLD: Duration = Duration::from_secs(60);
const T0: Timestamp = Timestamp(1_700_000_000_000);

fn ip_pool(name: &str, blocks: &[&str]) -> Pool {
    Pool::new(name.parse().unwrap(), blocks.iter().map(|b| b.parse().unwrap()).collect(), PoolOptions::default())
        .unwrap()
}
fn req(s: &str) -> AllocRequest {
    AllocRequest::new(s.parse().unwrap())
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn count(pool: &SqlitePool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn migrations_apply_from_empty_and_are_idempotent(pool: SqlitePool) {
    MIGRATOR.run(&pool).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in [
        "addresses",
        "events",
        "holders",
        "meta",
        "pool_blocks",
        "pools",
        "ports",
        "quarantine",
        "reservations",
        "services",
    ] {
        assert!(tables.iter().any(|x| x == t), "table {t} must exist after migrating from empty, have {tables:?}");
    }
    let generation: i64 =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'generation'").fetch_one(&pool).await.unwrap();
    assert_eq!(generation, 0, "a fresh store starts at generation 0");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn allocations_persist_and_are_idempotent(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone()).with_actor("test");
    s.add_pool(pool_of("web"), T0).await.unwrap();
    let a = s.allocate(&req("ns/a"), T0, HOLD).await.unwrap();
    assert_eq!(a.change, Change::Created);
    // A second store on the same database: cold cache, same answer.
    let s2 = Store::from_sqlite(pool.clone());
    let again = s2.allocate(&req("ns/a"), T0, HOLD).await.unwrap();
    assert_eq!(again.change, Change::Unchanged, "asking again returns the same allocation");
    assert_eq!(again.allocation.addresses, a.allocation.addresses);
    // Interleaved writers never hand out the same address.
    let b = s.allocate(&req("ns/b"), T0, HOLD).await.unwrap();
    let c = s2.allocate(&req("ns/c"), T0, HOLD).await.unwrap();
    let d = s.allocate(&req("ns/d"), T0, HOLD).await.unwrap();
    let mut all: Vec<IpAddr> = [&a, &b, &c, &d].iter().flat_map(|o| o.allocation.addresses.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "two stores sharing one file must see each other's allocations");
    assert_eq!(count(&pool, "holders").await, 4);
    let events = s.events(None, None).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "address.allocated").count(), 4);
    assert!(events.iter().any(|e| e.actor == "test"), "the audit log names the actor");
    assert!(s.integrity_check().await.unwrap().is_empty());
}

fn pool_of(name: &str) -> Pool {
    ip_pool(name, &["192.0.2.0/29", "2001:db8::/126"])
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn schema_refuses_double_allocation_even_if_logic_were_wrong(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(pool_of("web"), T0).await.unwrap();
    let a = s.allocate(&req("ns/a"), T0, HOLD).await.unwrap();
    let addr = a.allocation.addresses[0].to_string();
    sqlx::query("INSERT INTO services (namespace, name, uid, pool, sharing_key, ports, created_ms, updated_ms) VALUES ('ns','evil',NULL,'web','','[]',0,0)")
        .execute(&pool)
        .await
        .unwrap();
    let second_exclusive =
        sqlx::query("INSERT INTO holders (address, sharing_key, namespace, name) VALUES (?1, '', 'ns', 'evil')")
            .bind(&addr)
            .execute(&pool)
            .await;
    assert!(second_exclusive.is_err(), "a second exclusive holder of {addr} must violate a constraint");
    let other_key =
        sqlx::query("INSERT INTO holders (address, sharing_key, namespace, name) VALUES (?1, 'k', 'ns', 'evil')")
            .bind(&addr)
            .execute(&pool)
            .await;
    assert!(other_key.is_err(), "a holder with another sharing key must violate the foreign key");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sharing_ports_are_unique_per_address(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(pool_of("web"), T0).await.unwrap();
    let mut a = req("ns/a");
    a.sharing_key = Some("k".parse().unwrap());
    a.ports = ["tcp/80".parse().unwrap()].into();
    let mut b = req("ns/b");
    b.sharing_key = a.sharing_key.clone();
    b.ports = ["tcp/443".parse().unwrap()].into();
    let x = s.allocate(&a, T0, HOLD).await.unwrap().allocation.addresses;
    let y = s.allocate(&b, T0, HOLD).await.unwrap().allocation.addresses;
    assert_eq!(x, y, "same key, disjoint ports: one address");
    let dup = sqlx::query("INSERT INTO ports (address, port, namespace, name) VALUES (?1, 'tcp/80', 'ns', 'b')")
        .bind(x[0].to_string())
        .execute(&pool)
        .await;
    assert!(dup.is_err(), "two services on one address and port must violate the primary key");
    // Releasing one sharer keeps the address for the other.
    s.release(&a.service, None, T0, HOLD).await.unwrap().unwrap();
    assert_eq!(count(&pool, "addresses").await, 1);
    assert_eq!(count(&pool, "quarantine").await, 0, "an address still shared is not quarantined");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn quarantine_survives_restart_and_expires(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(ip_pool("tiny", &["192.0.2.0/32"]), T0).await.unwrap();
    s.allocate(&req("ns/a"), T0, HOLD).await.unwrap();
    let r = s.release(&"ns/a".parse().unwrap(), None, T0, HOLD).await.unwrap().unwrap();
    assert_eq!(r.quarantined.len(), 1);
    let s2 = Store::from_sqlite(pool.clone());
    let e = s2.allocate(&req("ns/b"), T0.plus(Duration::from_secs(59)), HOLD).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Ipam(IpamError::Exhausted { .. })),
        "the quarantined address is not free for b: {e}"
    );
    let back = s2.allocate(&req("ns/a"), T0.plus(Duration::from_secs(30)), HOLD).await.unwrap();
    assert_eq!(back.allocation.addresses, vec![ip("192.0.2.0")], "a returns within the quarantine and gets it back");
    assert_eq!(count(&pool, "quarantine").await, 0);
    s2.release(&"ns/a".parse().unwrap(), None, T0.plus(Duration::from_secs(40)), HOLD).await.unwrap();
    let later = T0.plus(Duration::from_secs(101));
    let b = Store::from_sqlite(pool.clone()).allocate(&req("ns/b"), later, HOLD).await.unwrap();
    assert_eq!(b.allocation.addresses, vec![ip("192.0.2.0")], "after the quarantine anyone may have it");
    assert_eq!(count(&pool, "quarantine").await, 0, "the expired quarantine row is gone");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn removing_or_shrinking_pools_in_use_needs_force(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(pool_of("web"), T0).await.unwrap();
    for n in ["a", "b", "c"] {
        s.allocate(&req(&format!("ns/{n}")), T0, HOLD).await.unwrap();
    }
    let events_before = s.events(None, None).await.unwrap().len();
    let e = s.remove_pool(&"web".parse().unwrap(), false, T0).await.unwrap_err();
    assert!(e.to_string().contains("ns/a holds 192.0.2.0"), "{e}");
    // Shrinking through apply is refused the same way, and nothing is written.
    let shrunk = Desired { pools: vec![ip_pool("web", &["192.0.2.1/32", "2001:db8::/126"])], reservations: vec![] };
    let e = s.apply(shrunk.clone(), false, false, T0).await.unwrap_err();
    assert!(matches!(e, StoreError::InUse { ref stranded, .. } if stranded.len() == 2), "{e}");
    assert_eq!(s.events(None, None).await.unwrap().len(), events_before, "a refused change writes nothing");
    assert_eq!(count(&pool, "pool_blocks").await, 2);
    let report = s.apply(shrunk, false, true, T0).await.unwrap();
    assert_eq!(report.released.len(), 2);
    assert_eq!(count(&pool, "services").await, 1);
    let kinds: Vec<String> = s.events(None, None).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| *k == "address.force_released").count(), 2, "forced releases are recorded");
    let report = s.remove_pool(&"web".parse().unwrap(), true, T0).await.unwrap();
    assert_eq!(report.released.len(), 1);
    assert_eq!(count(&pool, "pools").await, 0);
    assert!(s.integrity_check().await.unwrap().is_empty());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn apply_is_idempotent_and_prunes(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    let desired = Desired {
        pools: vec![pool_of("web"), ip_pool("lab", &["198.51.100.0/28"])],
        reservations: vec![Reservation { block: "192.0.2.1".parse().unwrap(), note: "gw".into() }],
    };
    let first = s.apply(desired.clone(), false, false, T0).await.unwrap();
    assert!(first.changed);
    let second = s.apply(desired.clone(), false, false, T0).await.unwrap();
    assert!(!second.changed, "applying the same file twice changes nothing");
    assert!(second.pools.iter().all(|c| c.action == "unchanged"));
    let n_events = s.events(None, None).await.unwrap().len();
    let only_web = Desired { pools: vec![pool_of("web")], reservations: vec![] };
    let kept = s.apply(only_web.clone(), false, false, T0).await.unwrap();
    assert!(!kept.changed, "without --prune, pools missing from the file stay");
    assert_eq!(s.events(None, None).await.unwrap().len(), n_events);
    let pruned = s.apply(only_web, true, false, T0).await.unwrap();
    assert!(pruned.pools.iter().any(|c| c.name == "lab" && c.action == "removed"));
    assert_eq!(count(&pool, "reservations").await, 0);
    // Blocks may move between pools in one change.
    let moved = Desired { pools: vec![ip_pool("web2", &["192.0.2.0/29", "2001:db8::/126"])], reservations: vec![] };
    s.apply(moved, true, false, T0).await.unwrap();
    assert_eq!(count(&pool, "pools").await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn overlaps_and_reserved_allocations_are_refused(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(pool_of("web"), T0).await.unwrap();
    let e = s.add_pool(ip_pool("x", &["192.0.2.4/30"]), T0).await.unwrap_err();
    assert!(e.to_string().contains("overlaps pool \"web\""), "{e}");
    let e = s.add_pool(pool_of("web"), T0).await.unwrap_err();
    assert!(matches!(e, StoreError::PoolExists(_)));
    s.allocate(&req("ns/a"), T0, HOLD).await.unwrap();
    let r = Reservation { block: "192.0.2.0/31".parse().unwrap(), note: "hosts".into() };
    let e = s.add_reservation(r.clone(), false, T0).await.unwrap_err();
    assert!(e.to_string().contains("ns/a holds 192.0.2.0"), "{e}");
    s.add_reservation(Reservation { block: "192.0.2.4".parse().unwrap(), note: "gw".into() }, false, T0).await.unwrap();
    let e = s
        .add_reservation(Reservation { block: "192.0.2.4-192.0.2.5".parse().unwrap(), note: String::new() }, false, T0)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("overlaps reservation 192.0.2.4"), "{e}");
    let e = s.remove_reservation(&"192.0.2.7".parse().unwrap(), T0).await.unwrap_err();
    assert!(matches!(e, StoreError::UnknownReservation(_)));
    assert_eq!(count(&pool, "reservations").await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn uid_mismatch_refuses_release(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(pool_of("web"), T0).await.unwrap();
    let mut r = req("ns/a");
    r.uid = Some("1111".parse().unwrap());
    s.allocate(&r, T0, HOLD).await.unwrap();
    let e = s.release(&r.service, Some(&"2222".parse().unwrap()), T0, HOLD).await.unwrap_err();
    assert!(e.to_string().contains("uid 1111"), "{e}");
    assert_eq!(count(&pool, "services").await, 1, "a refused release keeps the allocation");
    // The cache was dropped on error; the next write still sees the truth.
    assert_eq!(s.allocate(&r, T0, HOLD).await.unwrap().change, Change::Unchanged);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn events_filter_by_time_and_limit(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(pool_of("web"), T0).await.unwrap();
    s.allocate(&req("ns/a"), T0.plus(Duration::from_secs(10)), HOLD).await.unwrap();
    s.allocate(&req("ns/b"), T0.plus(Duration::from_secs(20)), HOLD).await.unwrap();
    let since = s.events(Some(T0.plus(Duration::from_secs(15))), None).await.unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].subject, "ns/b");
    let last2 = s.events(None, Some(2)).await.unwrap();
    assert_eq!(
        last2.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>(),
        vec!["ns/a", "ns/b"],
        "the newest two, oldest first"
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn renaming_a_pool_rehomes_its_allocations(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone()).with_actor("test");
    s.add_pool(ip_pool("old", &["192.0.2.0/29"]), T0).await.unwrap();
    let a = s.allocate(&req("ns/a"), T0, HOLD).await.unwrap().allocation;
    s.allocate(&req("ns/b"), T0, HOLD).await.unwrap();
    s.release(&"ns/b".parse().unwrap(), None, T0, HOLD).await.unwrap();
    let renamed = Desired { pools: vec![ip_pool("new", &["192.0.2.0/29"])], reservations: vec![] };
    let r = s.apply(renamed, true, false, T0).await.unwrap();
    assert!(r.released.is_empty(), "a rename releases nothing (was: every allocation, with --force)");
    assert_eq!(r.rehomed.len(), 1, "ns/a moves to the new pool");
    // A second store over the same database reads what was written.
    let fresh = Store::from_sqlite(pool.clone()).snapshot().await.unwrap();
    let kept = fresh.allocation(&"ns/a".parse().unwrap()).unwrap();
    assert_eq!((kept.pool.as_str(), &kept.addresses), ("new", &a.addresses), "same address, new pool");
    assert_eq!(fresh.quarantined().len(), 1, "ns/b's quarantine survives the rename");
    assert!(fresh.pool(&"old".parse().unwrap()).is_none());
    let kinds: Vec<String> = s.events(None, None).await.unwrap().into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&"address.rehomed".to_string()), "the move is audited: {kinds:?}");
    assert!(s.integrity_check().await.unwrap().is_empty());
    // The cached index after the change is the committed state.
    assert_eq!(s.snapshot().await.unwrap().allocations().len(), 1);
    assert_eq!(s.read(|i| i.allocations().len()).await.unwrap(), 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn forgetting_keeps_only_what_agrees_and_frees_the_rest(pool: SqlitePool) {
    let s = Store::from_sqlite(pool.clone());
    s.add_pool(ip_pool("p", &["192.0.2.0/30"]), T0).await.unwrap();
    let a = s.allocate(&req("ns/a"), T0, HOLD).await.unwrap().allocation;
    let b = s.allocate(&req("ns/b"), T0, HOLD).await.unwrap().allocation;
    s.allocate(&req("ns/c"), T0, HOLD).await.unwrap();
    s.release(&"ns/c".parse().unwrap(), None, T0, HOLD).await.unwrap();
    let gone = s.forget(|x| x.service == a.service, T0).await.unwrap();
    assert_eq!(gone, 2, "ns/b's allocation and ns/c's quarantine entry go");
    let ipam = Store::from_sqlite(pool.clone()).snapshot().await.unwrap();
    assert_eq!(ipam.allocations().len(), 1, "only ns/a is kept");
    assert!(ipam.quarantined().is_empty(), "the store's quarantine is forgotten");
    let next = s.allocate(&req("ns/x"), T0, HOLD).await.unwrap().allocation;
    assert_eq!(next.addresses, b.addresses, "ns/b's address is free again, without quarantine");
    assert_eq!(s.forget(|_| true, T0).await.unwrap(), 0, "nothing to forget: nothing written");
    assert!(s.integrity_check().await.unwrap().is_empty());
}
