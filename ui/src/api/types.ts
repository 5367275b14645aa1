// Generated from vipvisor's Rust types by ts-rs (src-core/api/src/lib.rs, ui_types):
// do not edit. VIPVISOR_UPDATE_TS=1 cargo test -p vipvisor-api --features ts rewrites it.

export type JsonValue = number | string | boolean | Array<JsonValue> | { [key in string]?: JsonValue } | null;

export type ErrorCode = "invalid_value" | "config_conflict" | "unknown_pool" | "pool_exists" | "unknown_reservation" | "reservation_exists" | "would_strand" | "pool_exhausted" | "no_eligible_pool" | "address_not_in_pool" | "pool_not_eligible" | "address_reserved" | "address_in_use" | "port_in_use" | "address_quarantined" | "uid_mismatch" | "unreadable" | "unknown_token" | "token_exists" | "unauthenticated" | "forbidden" | "not_found" | "store_unavailable" | "auth_unavailable" | "internal";

export type ApiError = { code: ErrorCode, message: string, 
/**
 * The request field the error is about (`name`, `addresses`, `namespaces`, …), when
 * it is about one: forms show the message on that field.
 */
field?: string, };

export type Family = "ipv4" | "ipv6";

export type MacMode = "node" | "virtual";

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
priority: number | null, 
/**
 * Which MAC answers for the pool's addresses on the LAN ([`MacMode`]).
 */
mac: MacMode, };

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
priority: number | null, 
/**
 * Which MAC answers for the pool's addresses on the LAN ([`MacMode`]).
 */
mac: MacMode, };

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
priority: number | null, 
/**
 * Which MAC answers for the pool's addresses on the LAN ([`MacMode`]).
 */
mac: MacMode, };

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

export type OwnerSpan = { id: number, address: string, node: string, interface: string, mac: string, 
/**
 * `kubernetes` or `group`.
 */
source: string, start_ms: number, end_ms: number | null, 
/**
 * `''` (still the owner), `released` or `taken`.
 */
ended: string, };

export type Sighting = { address: string, mac: string, 
/**
 * The node whose speaker saw it.
 */
observer: string, interface: string, first_ms: number, last_ms: number, count: number, };

export type GrantRow = { provider: string, vm: string, mac: string, node: string, vips: Array<string>, 
/**
 * JSON text: the provider's record.
 */
record: string, 
/**
 * `applied` or `failed`.
 */
state: string, error: string, };

export type Reservation = { block: string, note: string, };

export type Failover = { address: string, from: string, to: string, at_ms: number, 
/**
 * How long nobody announced it: known when the previous owner said it stopped
 * (`released`); `null` when it was taken over from a node that went silent.
 */
gap_ms: number | null, };

export type VipView = { address: string, pool: string | null, 
/**
 * The services holding it (several when shared).
 */
allocations: Array<Allocation>, 
/**
 * `allocated`, `quarantined`, `reserved`, `free` or `outside` (in no pool).
 */
state: string, 
/**
 * The elected owner now.
 */
owner: OwnerSpan | null, 
/**
 * Its owners over time, oldest first (the newest 100).
 */
history: Array<OwnerSpan>, failovers: Array<Failover>, 
/**
 * MACs seen answering for it, newest first.
 */
seen: Array<Sighting>, 
/**
 * Why the MACs seen and the elected owner disagree, when they do.
 */
split_brain: string | null, 
/**
 * The hypervisor grants that let a node announce it.
 */
grants: Array<GrantRow>, };

export type FreeRange = { first: string, last: string, count: number, };

export type Cell = { address: string, 
/**
 * `free`, `allocated`, `quarantined`, `reserved`, `excluded` (.0/.255 skipped), or
 * `conflict` (a MAC that is no member's was seen answering for it).
 */
state: string, 
/**
 * The holder, last holder (quarantined) or reservation note.
 */
note: string, };

export type UsagePoint = { at_ms: number, used: number, };

export type PoolDetail = { pool: PoolView, 
/**
 * Reservations inside the pool's blocks.
 */
reservations: Array<Reservation>, 
/**
 * Free addresses as ranges, per family lowest first (at most 256 each).
 */
free: Array<FreeRange>, 
/**
 * One cell per address, for pools of at most 1024 addresses (else empty).
 */
cells: Array<Cell>, allocations: Array<Allocation>, 
/**
 * Used addresses over time, from the audit log (oldest first, at most 500 points).
 */
history: Array<UsagePoint>, };

export type PoolReason = { pool: string, reason: string, };

export type Pending = { service: string, 
/**
 * The error's stable code (`no_eligible_pool`, `pool_exhausted`, …); `null` when an
 * address would be given.
 */
code: ErrorCode | null, message: string, 
/**
 * The reason per pool, in the order pools are tried.
 */
pools: Array<PoolReason>, 
/**
 * What would be given (a dry run), when something would.
 */
would_get: Array<string>, 
/**
 * What is wrong with the Service's annotations (ignored values), from the controller.
 */
warnings: Array<string>, };

export type GrantView = { provider: string, vm: string, mac: string, node: string, vips: Array<string>, 
/**
 * What vipvisor added to the NIC (the provider's record).
 */
record: unknown, 
/**
 * `applied` or `failed`.
 */
state: string, error: string, };
