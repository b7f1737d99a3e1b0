-- Flag a session whose payment arrived when it could no longer be sold (expired,
-- cancelled, failed): the money must go back.
--
-- KEYS: session
-- ARGV: payment intent id, reason
-- Reply: {'OK', session fields…}
redis.call('HSET', KEYS[1], 'refund', ARGV[2], 'refundIntent', ARGV[1])
return session_snapshot(KEYS[1], 'OK')
