-- Where people are, projected from the registry's change stream (the registry owns it):
-- one row per person placed in a facility, replaced by every event about them.
CREATE TABLE placements (
    person_id TEXT PRIMARY KEY,
    facility_id TEXT NOT NULL,
    section_id TEXT NOT NULL,
    sex TEXT NOT NULL,
    -- The age band is worked out when counted, so people move up a band as years pass.
    birth_year BIGINT NOT NULL,
    child BIGINT NOT NULL,
    states TEXT NOT NULL,
    custody_status TEXT NOT NULL
);
CREATE INDEX placements_facility ON placements (facility_id, section_id);

-- How far each consumer of another service's stream has applied it, written in the same
-- transaction as what it applied, so a restart resumes exactly there.
CREATE TABLE consumer_cursors (
    consumer TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
);
