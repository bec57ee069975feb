-- Facilities: the site's own fields as the contract's JSON in doc; what queries filter on, and
-- what changes only through its own method (security status, custodian), in columns.
CREATE TABLE facilities (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    kind TEXT NOT NULL,
    custodian_agency TEXT NOT NULL,
    security_status TEXT NOT NULL,
    security_status_reason TEXT NOT NULL,
    security_status_time BIGINT NOT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX facilities_custodian ON facilities (custodian_agency, id);

-- Each facility's timeline: security status and custodian changes, never updated or deleted.
CREATE TABLE facility_events (
    id TEXT PRIMARY KEY,
    facility_id TEXT NOT NULL REFERENCES facilities (id),
    kind TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    from_custodian TEXT NOT NULL,
    to_custodian TEXT NOT NULL,
    reason TEXT NOT NULL,
    reporter TEXT NOT NULL,
    recorded_by TEXT NOT NULL,
    occur_time BIGINT NOT NULL,
    record_time BIGINT NOT NULL
);
CREATE INDEX facility_events_facility ON facility_events (facility_id, id);
