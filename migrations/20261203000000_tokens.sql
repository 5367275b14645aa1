-- API tokens for `vipvisor serve` (issue #12), version 3. Forward-only: never edit after it
-- has landed. Only the SHA-256 of a token is kept; the token is shown once, at creation.
CREATE TABLE tokens (
    name       TEXT PRIMARY KEY NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('viewer', 'admin')),
    hash       TEXT NOT NULL UNIQUE,          -- hex SHA-256 of the token
    created_ms INTEGER NOT NULL
) STRICT;
