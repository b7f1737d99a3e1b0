-- Read a session (expiring it if it is due).
--
-- KEYS: session
-- ARGV: the states before payment, joined by ','
-- Replies: {'OK' | 'EXPIRED_NOW', session JSON} | {'NOT_FOUND'}
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOT_FOUND'}
end
if expire_if_due(KEYS[1], now_ms(), ARGV[1]) then
  return session_snapshot(KEYS[1], 'EXPIRED_NOW')
end
return session_snapshot(KEYS[1], 'OK')
