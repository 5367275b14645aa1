-- Who announces each VIP, over time, and which MACs were seen answering for it (issue #12),
-- version 4. Forward-only: never edit after it has landed.
-- Fed by the controller (Kubernetes: the speakers' ServiceL2Status reports) and by static
-- group speakers run with --record (they share the store file). Kubernetes Events expire
-- after an hour; these rows are the failover history.

-- One row per stretch of time one node was the elected owner of an address.
CREATE TABLE ownership (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    address    TEXT NOT NULL,
    node       TEXT NOT NULL,
    interface  TEXT NOT NULL,               -- '' when not known
    mac        TEXT NOT NULL,               -- the owner's MAC(s), comma-separated; '' when not known
    source     TEXT NOT NULL CHECK (source IN ('kubernetes', 'group')),
    start_ms   INTEGER NOT NULL,
    end_ms     INTEGER,                     -- NULL: still the owner
    ended      TEXT NOT NULL DEFAULT '' CHECK (ended IN ('', 'released', 'taken'))
) STRICT;
CREATE INDEX ownership_by_address ON ownership (address, start_ms);
CREATE INDEX ownership_by_start ON ownership (start_ms);
-- One open stretch per address and node.
CREATE UNIQUE INDEX ownership_one_open ON ownership (address, node) WHERE end_ms IS NULL;

-- A MAC seen answering for (sending as) an address, by an observing speaker.
CREATE TABLE sightings (
    address   TEXT NOT NULL,
    mac       TEXT NOT NULL,
    observer  TEXT NOT NULL,
    interface TEXT NOT NULL,
    first_ms  INTEGER NOT NULL,
    last_ms   INTEGER NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (address, mac, observer)
) STRICT;
