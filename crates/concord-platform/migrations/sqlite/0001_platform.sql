-- Platform tables every service database has: the transactional outbox and request ids.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    -- '*' for events everyone in the service may see; otherwise '|FR|DE|': the states whose
    -- agencies may see the event (the person's nationalities at the time).
    scope_states TEXT NOT NULL,
    payload_type TEXT NOT NULL,
    payload BLOB NOT NULL,
    traceparent TEXT NOT NULL,
    create_time BIGINT NOT NULL
);

CREATE TABLE idempotency_keys (
    agency TEXT NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    resource_name TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    PRIMARY KEY (agency, request_id)
) WITHOUT ROWID;
