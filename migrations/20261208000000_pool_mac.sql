-- vipvisor schema, version 5: which MAC a pool's VIPs are announced with (issue #13).
-- Forward-only: never edit after it has landed.
-- 'node': the owner node's own MAC (the behaviour before this column); 'virtual': each
-- VIP's own locally administered MAC, which moves with the VIP.
ALTER TABLE pools ADD COLUMN mac TEXT NOT NULL DEFAULT 'node' CHECK (mac IN ('node', 'virtual'));
