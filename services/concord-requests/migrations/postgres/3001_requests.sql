-- Diplomatic requests: what queries filter on in columns; flags and the signed protocol as
-- JSON.
CREATE TABLE requests (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    requesting_state TEXT NOT NULL,
    requested_state TEXT NOT NULL,
    custodial_authority TEXT NOT NULL,
    receiving_state TEXT NOT NULL,
    summary TEXT NOT NULL,
    flags TEXT NOT NULL,
    state TEXT NOT NULL,
    suspended_from TEXT NOT NULL,
    state_reason TEXT NOT NULL,
    protocol TEXT NOT NULL,
    created_by TEXT NOT NULL,
    submit_time BIGINT NOT NULL,
    decide_time BIGINT NOT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX requests_requesting ON requests (requesting_state, id);
CREATE INDEX requests_requested ON requests (requested_state, id);
CREATE INDEX requests_custodian ON requests (custodial_authority, id);

-- The people a request is about, each with their own outcome.
CREATE TABLE subjects (
    request_id TEXT NOT NULL REFERENCES requests (id),
    person_id TEXT NOT NULL,
    unit TEXT NOT NULL,
    mother TEXT NOT NULL,
    outcome TEXT NOT NULL,
    disposition TEXT NOT NULL,
    verified_by TEXT NOT NULL,
    verify_time BIGINT NOT NULL,
    separation_consent TEXT NOT NULL,
    PRIMARY KEY (request_id, person_id)
);
CREATE INDEX subjects_person ON subjects (person_id);

-- Each request's timeline of states, never updated or deleted.
CREATE TABLE request_transitions (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests (id),
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    agency TEXT NOT NULL,
    record_time BIGINT NOT NULL
);
CREATE INDEX request_transitions_request ON request_transitions (request_id, id);
