-- What the registry recorded of each accepted subject's hand-over: PENDING when the request
-- is HANDED_OVER, then APPLIED or REFUSED (with the registry's reason) by the relay.
ALTER TABLE subjects ADD COLUMN registry_status TEXT NOT NULL DEFAULT '';
ALTER TABLE subjects ADD COLUMN registry_error TEXT NOT NULL DEFAULT '';
ALTER TABLE subjects ADD COLUMN registry_attempts BIGINT NOT NULL DEFAULT 0;
CREATE INDEX subjects_registry ON subjects (request_id, registry_status);

-- How far each consumer (the relay of this service's own log, the projection of the
-- registry's) has applied its stream, written in the transaction that applied it.
CREATE TABLE consumer_cursors (
    consumer TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
);

-- Tasks of requests, with owners and due dates.
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests (id),
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    owner TEXT NOT NULL,
    person_id TEXT NOT NULL,
    due_time BIGINT NOT NULL,
    state TEXT NOT NULL,
    result TEXT NOT NULL,
    created_by TEXT NOT NULL,
    completed_by TEXT NOT NULL,
    create_time BIGINT NOT NULL,
    complete_time BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX tasks_request ON tasks (request_id, id);
CREATE INDEX tasks_open_due ON tasks (state, due_time);

-- Diplomatic notes attached to requests; never updated or deleted.
CREATE TABLE notes (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES requests (id),
    reference TEXT NOT NULL,
    sender TEXT NOT NULL,
    addressee TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    document TEXT NOT NULL,
    send_time BIGINT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX notes_request ON notes (request_id, id);

-- The registry's people as far as statistics need them: one row per active nationality of
-- each person held now (in custody, hospitalised or in rehabilitation).
CREATE TABLE held_nationals (
    person_id TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (person_id, state)
);
CREATE INDEX held_nationals_state ON held_nationals (state);

-- The registry version last applied per person, so an older snapshot changes nothing.
CREATE TABLE person_versions (
    person_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
