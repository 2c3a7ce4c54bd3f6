-- 002_fairness: per-subscription in-flight caps and auto-disable.
-- Claims now go subscription by subscription (so one slow or dead receiver cannot take
-- every delivery slot), through an index per subscription; the global due index goes.

ALTER TABLE subscriptions ADD COLUMN max_in_flight INTEGER NOT NULL DEFAULT 16;
-- unix ms of the first failed attempt since the last success; NULL while healthy
ALTER TABLE subscriptions ADD COLUMN failing_since INTEGER;

CREATE INDEX deliveries_due_by_sub ON deliveries(subscription_id, next_attempt_at)
	WHERE state = 0 AND leased = 0;
DROP INDEX deliveries_due;
