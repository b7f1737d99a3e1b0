-- A paid session ends with its order too: the order's statement sets ended_at (ended_state
-- stays NULL: it ended with an order, not CANCELLED, EXPIRED or FAILED). So the live index
-- (checkout_sessions_live, ended_at IS NULL) holds only the sessions still waiting for
-- their payment, and what the lazy stock load and reconcile read of it no longer grows
-- with every order ever placed. Sessions that got their order before this migration end
-- here, when their order was written.
UPDATE checkout_sessions s
SET ended_at = o.created_at
FROM orders o
WHERE o.checkout_session_id = s.id AND s.ended_at IS NULL;

COMMENT ON COLUMN checkout_sessions.ended_at IS
    'When the session ended: with its order (ended_state NULL) or without (ended_state says how).';
