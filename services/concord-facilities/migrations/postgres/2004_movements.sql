-- Movements of people between facilities, and their manifests.
CREATE TABLE movements (
    id TEXT PRIMARY KEY,
    source_facility TEXT NOT NULL REFERENCES facilities (id),
    destination_facility TEXT NOT NULL REFERENCES facilities (id),
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    abort_reason TEXT NOT NULL,
    relocation_plan TEXT NOT NULL,
    planned_by TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    depart_time BIGINT NOT NULL,
    arrive_time BIGINT NOT NULL,
    -- 1 once the movement holds no places any more: ended, and whatever it sent the registry
    -- applied and seen by the projection (or refused). Keeps capacity checks to open ones.
    released BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX movements_destination ON movements (destination_facility, released, state);
CREATE INDEX movements_source ON movements (source_facility, released, state);

-- One row per person on a manifest; sex and age band as the projection had them at planning,
-- section as assigned at approval.
CREATE TABLE manifest_entries (
    movement_id TEXT NOT NULL REFERENCES movements (id),
    person_id TEXT NOT NULL,
    section_id TEXT NOT NULL,
    sex TEXT NOT NULL,
    age_band TEXT NOT NULL,
    age BIGINT NOT NULL,
    source_section TEXT NOT NULL,
    PRIMARY KEY (movement_id, person_id)
);

-- A person is on at most one open (PLANNED, APPROVED, IN_TRANSIT) movement: the key refuses a
-- second, even when two are planned at once. Deleted when the movement ends.
CREATE TABLE movement_holds (
    person_id TEXT PRIMARY KEY,
    movement_id TEXT NOT NULL
);

-- What the service must record in the registry, person by person, and what came of it:
-- written in the transaction of the step that causes it (departure, arrival, abort in
-- transit, marking the missing of a headcount) and carried out by the registry relay.
-- `person_version` is the registry's version of the person after it applied the step: an
-- arrival keeps its places reserved until the projection has seen that version.
CREATE TABLE registry_updates (
    subject TEXT NOT NULL,
    person_id TEXT NOT NULL,
    step TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    person_version BIGINT NOT NULL,
    PRIMARY KEY (subject, step, person_id)
);

-- The latest version of each person the projection has applied.
CREATE TABLE person_versions (
    person_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

-- Relocation plans as proposed: their movements point at them; what could not be placed and
-- the households split are kept as JSON, so a retried request returns the same plan.
CREATE TABLE relocation_plans (
    id TEXT PRIMARY KEY,
    facility_id TEXT NOT NULL REFERENCES facilities (id),
    unplaced TEXT NOT NULL,
    split_households TEXT NOT NULL,
    placed_count BIGINT NOT NULL,
    total_distance_km DOUBLE PRECISION NOT NULL,
    created_by TEXT NOT NULL,
    create_time BIGINT NOT NULL
);

-- Roll calls and their reconciliation with the registry; the lists are JSON arrays of ids.
CREATE TABLE headcounts (
    id TEXT PRIMARY KEY,
    facility_id TEXT NOT NULL REFERENCES facilities (id),
    reporter TEXT NOT NULL,
    incident TEXT NOT NULL,
    count_time BIGINT NOT NULL,
    expected_count BIGINT NOT NULL,
    counted TEXT NOT NULL,
    missing TEXT NOT NULL,
    unrecorded TEXT NOT NULL,
    unaccounted_mark_time BIGINT NOT NULL,
    recorded_by TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX headcounts_facility ON headcounts (facility_id, id);

-- The household a placed person belongs to, for relocation plans that keep families together.
ALTER TABLE placements ADD COLUMN household TEXT NOT NULL DEFAULT '';
