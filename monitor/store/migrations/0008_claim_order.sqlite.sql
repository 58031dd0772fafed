-- The delivery claim's order (#14): a channel's pending deliveries by the time they came
-- due. ``claim_deliveries`` reads this index from its start (``next_attempt <= now``) in
-- order and stops at its limit: no sort of every due delivery, and the rows leased,
-- held or backing off (due later) are never visited. Sent and failed rows are not in it.
CREATE INDEX deliveries_claim ON deliveries (channel, next_attempt, id) WHERE state = 'pending';
