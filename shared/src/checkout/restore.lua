-- Put back a paid session that Redis lost, from the copy PostgreSQL keeps since its
-- payment intent was created (DESIGN §4, invariant 8). A session Redis still has stands.
--
-- KEYS: session, metadata, payment intent
-- ARGV: session id, cart reference, deadline (epoch ms), how long the record outlives its
--       deadline (ms), total, currency, metadata JSON, intent id, intent JSON, state,
--       the states before payment joined by ',', the order's id ('' when none)
-- Replies: {'OK' | 'EXISTS' | 'EXPIRED_NOW', session fields…}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return session_snapshot(KEYS[1], 'EXISTS')
end
local now = now_ms()
local deadline, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local history = appended(nil, ARGV[10], now)
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'cart', ARGV[2], 'state', ARGV[10], 'version', 1,
  'deadline', deadline, 'total', ARGV[5], 'currency', ARGV[6], 'created', now,
  'history', history, 'intent', ARGV[8], 'restored', now)
if ARGV[12] ~= '' then
  redis.call('HSET', KEYS[1], 'order', ARGV[12])
end
-- Ended in PostgreSQL, whose end is the first step of a release: what else Redis still
-- holds of it (a partial loss) is freed by the read that put it back.
if ended_without_order(ARGV[10]) then
  redis.call('HSET', KEYS[1], 'releasing', '1')
end
redis.call('SET', KEYS[2], ARGV[7])
redis.call('SET', KEYS[3], ARGV[9])
for _, key in ipairs(KEYS) do
  redis.call('PEXPIREAT', key, math.max(deadline, now) + keep)
end
-- Past its deadline it expires now, as any session would (`read`: what was just written).
local read = {state = ARGV[10], deadline = deadline, history = history, version = 1}
if expire_if_due(KEYS[1], read, function() return now end, ARGV[11]) then
  return session_snapshot(KEYS[1], 'EXPIRED_NOW')
end
return session_snapshot(KEYS[1], 'OK')
