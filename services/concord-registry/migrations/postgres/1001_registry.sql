-- The registry's tables. `persons.doc` holds the caller-written fields as JSON; the columns
-- beside it are copies kept for filtering, scoping and ordering.
CREATE TABLE persons (
    id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    display_name TEXT NOT NULL,
    category TEXT NOT NULL,
    sex TEXT NOT NULL,
    legal_status TEXT NOT NULL,
    identity_confidence TEXT NOT NULL,
    birth_year BIGINT,
    custody_status TEXT NOT NULL,
    facility_id TEXT NOT NULL,
    section_id TEXT NOT NULL,
    merged_into TEXT NOT NULL,
    receiving_state TEXT NOT NULL,
    disposition TEXT NOT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX persons_custody_status ON persons (custody_status, id);
CREATE INDEX persons_facility ON persons (facility_id, id);
CREATE INDEX persons_category ON persons (category, id);

-- Active (not revoked) nationalities: the scope of state agencies.
CREATE TABLE person_nationalities (
    person_id TEXT NOT NULL REFERENCES persons (id),
    state TEXT NOT NULL,
    PRIMARY KEY (person_id, state)
);
CREATE INDEX person_nationalities_state ON person_nationalities (state, person_id);

-- Transliteration-tolerant search keys, one row per name token. No index by person: the
-- store deletes a person's rows by recomputing them (see store::persons).
CREATE TABLE person_name_keys (
    skeleton TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES persons (id),
    folded TEXT NOT NULL,
    PRIMARY KEY (skeleton, person_id, folded)
);

-- Exact-lookup keys for duplicate detection: name signatures, documents, biometrics.
CREATE TABLE person_match_keys (
    match_key TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES persons (id),
    PRIMARY KEY (match_key, person_id)
);

CREATE TABLE custody_events (
    id TEXT PRIMARY KEY,
    person_id TEXT NOT NULL REFERENCES persons (id),
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    facility_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    reference TEXT NOT NULL,
    occur_time BIGINT NOT NULL,
    record_time BIGINT NOT NULL,
    recorded_by TEXT NOT NULL
);
CREATE INDEX custody_events_person ON custody_events (person_id, id);

CREATE TABLE duplicate_candidates (
    id TEXT PRIMARY KEY,
    person_id TEXT NOT NULL REFERENCES persons (id),
    other_person_id TEXT NOT NULL REFERENCES persons (id),
    score DOUBLE PRECISION NOT NULL,
    reasons TEXT NOT NULL,
    state TEXT NOT NULL,
    surviving_person_id TEXT NOT NULL,
    review_reason TEXT NOT NULL,
    version BIGINT NOT NULL,
    create_time BIGINT NOT NULL,
    update_time BIGINT NOT NULL,
    UNIQUE (person_id, other_person_id)
);
CREATE INDEX duplicate_candidates_state ON duplicate_candidates (state, id);

-- Family and identity records hang off a person; `body` is the record as JSON.
CREATE TABLE person_records (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES persons (id),
    other_person_id TEXT NOT NULL,
    body TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE INDEX person_records_person ON person_records (person_id, kind, id);
CREATE INDEX person_records_other ON person_records (other_person_id, kind, id);

CREATE TABLE households (
    id TEXT PRIMARY KEY,
    head TEXT NOT NULL,
    create_time BIGINT NOT NULL
);
CREATE TABLE household_members (
    household_id TEXT NOT NULL REFERENCES households (id),
    person_id TEXT NOT NULL REFERENCES persons (id),
    PRIMARY KEY (household_id, person_id)
);
