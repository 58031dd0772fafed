-- Adaptive polling (issue #13): what each feed says about how often to poll it (<ttl>,
-- sy:updatePeriod/sy:updateFrequency/sy:updateBase, kept from its last parsed document,
-- since a 304 carries none), the publishing cadence learned from its entries, and the
-- interval decided at its last successful poll with the reason (for status and logs).
-- Seconds are REAL; NULL means not known.
ALTER TABLE feeds ADD COLUMN ttl REAL;
ALTER TABLE feeds ADD COLUMN update_period REAL;
ALTER TABLE feeds ADD COLUMN update_base TEXT;
ALTER TABLE feeds ADD COLUMN cadence REAL;
ALTER TABLE feeds ADD COLUMN poll_interval REAL;
ALTER TABLE feeds ADD COLUMN poll_reason TEXT;
