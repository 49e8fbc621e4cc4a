-- REST writes bump this counter; every replica polls it and, when it moves, re-reads the REST
-- objects (`source = 'rest'`), so an object registered through one replica is served by all.
CREATE TABLE IF NOT EXISTS catalog_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO catalog_revision (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
