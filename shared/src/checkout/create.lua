-- Create a checkout session that has locked its cart, frozen its quote and held its stock.
--
-- KEYS: session, metadata
-- ARGV: session id, cart reference, deadline (epoch ms, Redis clock: the one its holds
--       were given, less their grace), how long the record outlives its deadline (ms),
--       total, currency, metadata JSON
-- Replies: {'OK', session JSON} | {'EXISTS', session JSON} (a retry: the first one stands)
if redis.call('EXISTS', KEYS[1]) == 1 then
  return session_snapshot(KEYS[1], 'EXISTS')
end
local now = now_ms()
local deadline, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local history = cjson.encode({{state = 'CREATED', at = now}, {state = 'LOCKED', at = now}})
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'cart', ARGV[2], 'state', 'LOCKED', 'version', 2,
  'deadline', deadline, 'total', ARGV[5], 'currency', ARGV[6], 'created', now, 'history', history)
redis.call('SET', KEYS[2], ARGV[7])
redis.call('PEXPIREAT', KEYS[1], deadline + keep)
redis.call('PEXPIREAT', KEYS[2], deadline + keep)
return session_snapshot(KEYS[1], 'OK')
