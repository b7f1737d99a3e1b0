-- Create a checkout session that has locked its cart, frozen its quote and held its stock.
--
-- KEYS: session, metadata
-- ARGV: session id, cart reference, deadline (epoch ms, Redis clock: the one its holds
--       were given, less their grace), how long the record outlives its deadline (ms),
--       total, currency, metadata JSON
-- Replies: {'OK' | 'EXISTS' (a retry: the first one stands), session fields…}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return session_snapshot(KEYS[1], 'EXISTS')
end
local now = now_ms()
local deadline, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local history = appended(appended(nil, 'CREATED', now), 'LOCKED', now)
local fields = {'id', ARGV[1], 'cart', ARGV[2], 'state', 'LOCKED', 'version', '2',
  'deadline', ARGV[3], 'total', ARGV[5], 'currency', ARGV[6], 'created', string.format('%d', now),
  'history', history}
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIREAT', KEYS[1], deadline + keep)
redis.call('SET', KEYS[2], ARGV[7], 'PXAT', deadline + keep)
-- The reply is what was just written: no read back.
table.insert(fields, 1, 'OK')
return fields
