-- The household a person last joined, on the person, so that it travels in their change
-- events (relocation keeps families together).
ALTER TABLE persons ADD COLUMN household TEXT NOT NULL DEFAULT '';

-- People who joined households before this column existed: the latest household of each.
UPDATE persons SET household = COALESCE(
    (SELECT MAX(m.household_id) FROM household_members m WHERE m.person_id = persons.id), '');
