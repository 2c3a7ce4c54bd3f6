-- 003_lean_indexes: fewer index pages rewritten per delivery.
-- Every delivery moved from (0, id) to (1, id) in deliveries_by_state and in and out of
-- deliveries_leased; most rows end delivered and are never listed by state again. Partial
-- indexes over the pending and the failed rows serve the status filters; the start-up
-- lease reset uses the pending one.

CREATE INDEX deliveries_pending ON deliveries(id) WHERE state = 0;
CREATE INDEX deliveries_failed ON deliveries(id) WHERE state = 2;
DROP INDEX deliveries_by_state;
DROP INDEX deliveries_leased;
