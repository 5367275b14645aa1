-- vipvisor IPAM schema, version 1. Forward-only: never edit after it has landed.
-- Addresses are stored in their canonical text form (Rust's IpAddr Display).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) STRICT;
-- Bumped by every write transaction; processes compare it to know their cache is current.
INSERT INTO meta (key, value) VALUES ('generation', 0);

CREATE TABLE pools (
    name               TEXT PRIMARY KEY NOT NULL,
    auto_assign        INTEGER NOT NULL CHECK (auto_assign IN (0, 1)),
    avoid_buggy_ips    INTEGER NOT NULL CHECK (avoid_buggy_ips IN (0, 1)),
    namespaces         TEXT NOT NULL,       -- JSON array of names; empty = all
    namespace_selector TEXT NOT NULL,       -- JSON object k -> v
    service_selector   TEXT NOT NULL,       -- JSON object k -> v
    priority           INTEGER CHECK (priority IS NULL OR priority >= 0),
    created_ms         INTEGER NOT NULL,
    updated_ms         INTEGER NOT NULL
) STRICT;

CREATE TABLE pool_blocks (
    pool     TEXT NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    block    TEXT NOT NULL,                 -- as parsed: CIDR, range or single address
    PRIMARY KEY (pool, position),
    UNIQUE (block)
) STRICT;

CREATE TABLE reservations (
    block      TEXT PRIMARY KEY NOT NULL,
    note       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;

-- One row per service that holds addresses.
CREATE TABLE services (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    uid         TEXT,
    pool        TEXT NOT NULL REFERENCES pools (name),
    sharing_key TEXT NOT NULL,              -- '' = not shared
    ports       TEXT NOT NULL,              -- JSON array of "proto/port"
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
) STRICT;

-- One row per address in use. Its sharing key is the only key its holders may use.
CREATE TABLE addresses (
    address     TEXT PRIMARY KEY NOT NULL,
    pool        TEXT NOT NULL REFERENCES pools (name),
    sharing_key TEXT NOT NULL,              -- '' = exclusive
    UNIQUE (address, sharing_key)
) STRICT;

-- Who holds which address. The last line of defence against double allocation:
--  * the foreign key (address, sharing_key) makes every holder use the address's key;
--  * the partial unique index lets an exclusive ('') address have one holder only.
CREATE TABLE holders (
    address     TEXT NOT NULL,
    sharing_key TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    PRIMARY KEY (address, namespace, name),
    FOREIGN KEY (address, sharing_key) REFERENCES addresses (address, sharing_key),
    FOREIGN KEY (namespace, name) REFERENCES services (namespace, name) ON DELETE CASCADE
) STRICT;
CREATE UNIQUE INDEX holders_one_exclusive ON holders (address) WHERE sharing_key = '';
CREATE INDEX holders_by_service ON holders (namespace, name);

-- Ports on shared addresses: one service per (address, protocol, port).
CREATE TABLE ports (
    address   TEXT NOT NULL REFERENCES addresses (address),
    port      TEXT NOT NULL,                -- "tcp/80"
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    PRIMARY KEY (address, port),
    FOREIGN KEY (namespace, name) REFERENCES services (namespace, name) ON DELETE CASCADE
) STRICT;
CREATE INDEX ports_by_service ON ports (namespace, name);

-- Released addresses that only their last holder may take until `until_ms`.
CREATE TABLE quarantine (
    address   TEXT PRIMARY KEY NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    until_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX quarantine_by_until ON quarantine (until_ms);

-- Audit log: every change, with time and actor.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL                   -- JSON
) STRICT;
CREATE INDEX events_by_time ON events (at_ms);
