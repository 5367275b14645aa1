-- Hypervisor grants (issue #11), version 2. Forward-only: never edit after it has landed.
-- One row per VM NIC that vipvisor changed: which VIPs its node may announce, and exactly
-- what vipvisor added to the NIC (the provider's record, JSON), so that revoking takes
-- back that and never what the operator had.
CREATE TABLE grants (
    provider   TEXT NOT NULL,
    vm         TEXT NOT NULL,
    mac        TEXT NOT NULL,
    node       TEXT NOT NULL,
    vips       TEXT NOT NULL,                -- JSON array of addresses
    record     TEXT NOT NULL,                -- JSON: what the provider added
    state      TEXT NOT NULL CHECK (state IN ('applied', 'failed')),
    error      TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (provider, vm, mac)
) STRICT;
