-- Incidents at facilities and their lifecycle; counts as last reported.
CREATE TABLE incidents (
    id TEXT PRIMARY KEY,
    facility_id TEXT NOT NULL REFERENCES facilities (id),
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    killed BIGINT NOT NULL,
    injured BIGINT NOT NULL,
    missing BIGINT NOT NULL,
    reporter TEXT NOT NULL,
    occur_time BIGINT NOT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX incidents_facility ON incidents (facility_id, id);
