-- 004_failed_by_sub: a subscription's failed deliveries without walking its history.
-- "What failed for this subscription?" (GET /v1/deliveries?subscription=&status=failed, and
-- the recover route) walked deliveries_by_sub over every row the subscription ever had,
-- about 0.3 s per million delivered rows. Failed rows are few, so this index costs writes
-- only when a delivery fails.

CREATE INDEX deliveries_failed_by_sub ON deliveries(subscription_id, id) WHERE state = 2;
