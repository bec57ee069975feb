-- Pairs of name skeletons that occur in the same name: a multi-word search finds its
-- candidates here (people whose names hold at least two of the query's words) instead of
-- merging the long posting lists of common single names such as Mohammed.
CREATE TABLE person_name_pairs (
    pair TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES persons (id),
    PRIMARY KEY (pair, person_id)
) WITHOUT ROWID;
