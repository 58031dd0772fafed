-- A grouped rule's deliveries (group_by) carry their group key: the group's state (its
-- last message, its thread root, its oldest pending delivery) is read from its rows
ALTER TABLE deliveries ADD COLUMN grp TEXT;
CREATE INDEX deliveries_grp ON deliveries (grp, state);
