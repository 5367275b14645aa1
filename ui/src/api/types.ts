// Generated from vipvisor's Rust types by ts-rs (src-core/api/src/lib.rs, ui_types):
// do not edit. VIPVISOR_UPDATE_TS=1 cargo test -p vipvisor-api --features ts rewrites it.

export type ErrorCode = "invalid_value" | "config_conflict" | "unknown_pool" | "pool_exists" | "unknown_reservation" | "reservation_exists" | "would_strand" | "pool_exhausted" | "no_eligible_pool" | "address_not_in_pool" | "pool_not_eligible" | "address_reserved" | "address_in_use" | "port_in_use" | "address_quarantined" | "uid_mismatch" | "unreadable" | "unknown_token" | "token_exists" | "unauthenticated" | "forbidden" | "not_found" | "store_unavailable" | "internal";

export type ApiError = { code: ErrorCode, message: string, };

export type Family = "ipv4" | "ipv6";

export type PoolOptions = { 
/**
 * Hand the pool's addresses out to services that name neither a pool nor an address.
 */
auto_assign: boolean, 
/**
 * Skip IPv4 addresses ending in .0 and .255.
 */
avoid_buggy_ips: boolean, 
/**
 * Namespaces allowed to use the pool (empty: all).
 */
namespaces: Array<string>, 
/**
 * Namespace labels required to use the pool.
 */
namespace_selector: { [key in string]: string }, 
/**
 * Service labels required to use the pool.
 */
service_selector: { [key in string]: string }, 
/**
 * Lower numbers are tried first; pools without a priority come after all that have one.
 */
priority: number | null, };

export type Pool = { name: string, addresses: Array<string>, 
/**
 * Hand the pool's addresses out to services that name neither a pool nor an address.
 */
auto_assign: boolean, 
/**
 * Skip IPv4 addresses ending in .0 and .255.
 */
avoid_buggy_ips: boolean, 
/**
 * Namespaces allowed to use the pool (empty: all).
 */
namespaces: Array<string>, 
/**
 * Namespace labels required to use the pool.
 */
namespace_selector: { [key in string]: string }, 
/**
 * Service labels required to use the pool.
 */
service_selector: { [key in string]: string }, 
/**
 * Lower numbers are tried first; pools without a priority come after all that have one.
 */
priority: number | null, };

export type FamilyStats = { family: Family, 
/**
 * Usable addresses in the pool's blocks (without .0/.255 under avoid_buggy_ips).
 */
size: number, reserved: number, used: number, quarantined: number, free: number, };

export type PoolView = { families: Array<FamilyStats>, name: string, addresses: Array<string>, 
/**
 * Hand the pool's addresses out to services that name neither a pool nor an address.
 */
auto_assign: boolean, 
/**
 * Skip IPv4 addresses ending in .0 and .255.
 */
avoid_buggy_ips: boolean, 
/**
 * Namespaces allowed to use the pool (empty: all).
 */
namespaces: Array<string>, 
/**
 * Namespace labels required to use the pool.
 */
namespace_selector: { [key in string]: string }, 
/**
 * Service labels required to use the pool.
 */
service_selector: { [key in string]: string }, 
/**
 * Lower numbers are tried first; pools without a priority come after all that have one.
 */
priority: number | null, };

export type Allocation = { service: string, uid: string | null, pool: string, addresses: Array<string>, sharing_key: string | null, ports: Array<string>, };

export type Page<T> = { total: number, offset: number, items: Array<T>, };

export type Change = "unchanged" | "created" | "updated";

export type Allocated = { service: string, addresses: Array<string>, pool: string, change: Change, };

export type ReleaseResult = { service: string, 
/**
 * Empty when the service held nothing.
 */
released: Array<string>, quarantined_until: string | null, };

export type ItemChange = { name: string, action: string, };

export type ConfigReport = { changed: boolean, pools: Array<ItemChange>, reservations: Array<ItemChange>, 
/**
 * Allocations kept in another pool (a pool renamed or split).
 */
rehomed: Array<Allocation>, 
/**
 * Allocations released by `force`.
 */
released: Array<Allocation>, };

export type Event = { id: number, at: string, at_ms: number, actor: string, kind: string, subject: string, detail: JsonValue, };

export type Role = "viewer" | "admin";

export type Caller = { name: string, role: Role, };

export type TokenView = { name: string, role: Role, created: string, };
