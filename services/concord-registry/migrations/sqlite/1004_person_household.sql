-- The household a person last joined, on the person, so that it travels in their change
-- events (relocation keeps families together).
ALTER TABLE persons ADD COLUMN household TEXT NOT NULL DEFAULT '';
