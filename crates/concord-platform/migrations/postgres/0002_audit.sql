-- Append-only, hash-chained audit log: who read or wrote which record, which fields, why,
-- with what outcome, in which trace. Each row's hash covers its content and the previous
-- row's hash, so altering, removing or reordering rows breaks the chain.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    record_time BIGINT NOT NULL,
    agency TEXT NOT NULL,
    state TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    fields TEXT NOT NULL,
    purpose TEXT NOT NULL,
    outcome TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
