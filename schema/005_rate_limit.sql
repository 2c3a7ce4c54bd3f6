-- 005_rate_limit: a subscription may cap how many deliveries start per second.
-- NULL is no limit (every existing subscription). The bucket itself lives in memory:
-- after a restart a limited subscription starts with a full burst.

ALTER TABLE subscriptions ADD COLUMN rate_limit INTEGER;
