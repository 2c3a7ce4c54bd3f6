-- 001_init: subscriptions, their secrets, events (stored once as the exact envelope
-- bytes), one delivery row per (event, matching subscription), one attempt row per try.
-- Times are unix milliseconds. Only the writer thread writes these tables.

CREATE TABLE subscriptions (
	id              INTEGER PRIMARY KEY,
	url             TEXT    NOT NULL,
	event_types     TEXT    NOT NULL,          -- JSON array of patterns
	description     TEXT,
	headers         TEXT,                      -- JSON object of custom headers, or NULL
	enabled         INTEGER NOT NULL DEFAULT 1,
	disabled_reason TEXT,
	created_at      INTEGER NOT NULL,
	updated_at      INTEGER NOT NULL,
	deleted_at      INTEGER                    -- soft delete keeps the delivery log readable
);

-- Signing secrets, newest first by id. expires_at NULL = the current secret; a rotated
-- one keeps signing until expires_at.
CREATE TABLE subscription_secrets (
	id              INTEGER PRIMARY KEY,
	subscription_id INTEGER NOT NULL REFERENCES subscriptions(id),
	secret          TEXT    NOT NULL,
	created_at      INTEGER NOT NULL,
	expires_at      INTEGER
);
CREATE INDEX subscription_secrets_by_sub ON subscription_secrets(subscription_id, id);

CREATE TABLE events (
	seq             INTEGER PRIMARY KEY,       -- cursor order
	id              TEXT    NOT NULL UNIQUE,   -- evt_...
	type            TEXT    NOT NULL,
	key             TEXT,
	idempotency_key TEXT    UNIQUE,
	created_at      INTEGER NOT NULL,
	envelope        BLOB    NOT NULL           -- the exact bytes sent and signed
);
CREATE INDEX events_by_type ON events(type, seq);

-- state: 0 pending, 1 delivered, 2 failed. A pending row with next_attempt_at NULL is
-- held (its subscription is disabled). leased = 1 while the dispatcher has it in flight;
-- every lease is dropped at start-up, which is what makes a crash re-send it.
CREATE TABLE deliveries (
	id               INTEGER PRIMARY KEY,
	event_seq        INTEGER NOT NULL REFERENCES events(seq),
	subscription_id  INTEGER NOT NULL REFERENCES subscriptions(id),
	state            INTEGER NOT NULL DEFAULT 0,
	attempt_count    INTEGER NOT NULL DEFAULT 0,
	next_attempt_at  INTEGER,
	leased           INTEGER NOT NULL DEFAULT 0,
	last_http_status INTEGER,
	last_error       TEXT,
	created_at       INTEGER NOT NULL,
	updated_at       INTEGER NOT NULL
);
CREATE INDEX deliveries_due      ON deliveries(next_attempt_at) WHERE state = 0 AND leased = 0;
CREATE INDEX deliveries_leased   ON deliveries(id) WHERE leased = 1;
CREATE INDEX deliveries_by_event ON deliveries(event_seq);
CREATE INDEX deliveries_by_sub   ON deliveries(subscription_id, id);
CREATE INDEX deliveries_by_state ON deliveries(state, id);

CREATE TABLE attempts (
	id            INTEGER PRIMARY KEY,
	delivery_id   INTEGER NOT NULL REFERENCES deliveries(id),
	attempt       INTEGER NOT NULL,
	started_at    INTEGER NOT NULL,
	duration_ms   INTEGER NOT NULL,
	http_status   INTEGER NOT NULL,            -- 0 = no response
	error         TEXT,
	response_body BLOB                         -- first 4 KiB
);
CREATE INDEX attempts_by_delivery ON attempts(delivery_id, attempt);
