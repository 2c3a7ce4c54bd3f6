-- 006_held_due: held deliveries keep a due time.
-- Builds before cf3ad8d held a disabled subscription's pending deliveries by setting
-- next_attempt_at to NULL (001's comment); claims now skip a disabled subscription and
-- take only rows with a due time, so such rows would never go out once it is enabled
-- again. They become due at their last change; no row is NULL-and-pending after this.

UPDATE deliveries SET next_attempt_at = updated_at WHERE state = 0 AND next_attempt_at IS NULL;
