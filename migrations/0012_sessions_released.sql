-- A paid session's end is written first (ended_at, so that no reload puts its holds back),
-- then Redis frees its holds and lock and its intent is cancelled; released_at says that
-- the whole release ran. A request cut short in between leaves ended_at without
-- released_at, and the sweep (`commerce serve`'s pass, `commerce sweep`) finishes it:
-- before, it met only sessions PostgreSQL still showed live, so such a session kept its
-- holds and its open intent until a read of it came.
ALTER TABLE checkout_sessions ADD COLUMN released_at timestamptz;

-- Sessions ended more than a day before this column existed are past their record's life
-- in Redis and were released by the code of their time, or their holds have lapsed since.
-- Those ended within the day are left to the sweep, which releases each once more (every
-- step of a release is idempotent): one cut short among them is finished.
UPDATE checkout_sessions SET released_at = ended_at
WHERE ended_at IS NOT NULL AND ended_at < now() - interval '1 day';

CREATE INDEX checkout_sessions_unreleased ON checkout_sessions (ended_at)
    WHERE released_at IS NULL AND ended_state IS NOT NULL;
