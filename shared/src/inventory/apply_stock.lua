-- Apply stock change: mirror one committed PostgreSQL change of on-hand into Redis.
--
-- KEYS: stock, stock-version
-- ARGV: delta, on-hand after the change, row version of the change
--
-- PostgreSQL commits first and every change bumps the row version, so the change is
-- applied exactly once whatever else races it: a missing key takes the absolute value; a
-- key loaded at or after this version already includes it; otherwise the delta is added.
--
-- Reply: {'OK', stock}
local delta, on_hand, version = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], on_hand)
  redis.call('HSET', KEYS[2], 'base', version, 'max', version)
elseif version > (tonumber(redis.call('HGET', KEYS[2], 'base')) or 0) then
  redis.call('INCRBY', KEYS[1], delta)
  if version > (tonumber(redis.call('HGET', KEYS[2], 'max')) or 0) then
    redis.call('HSET', KEYS[2], 'max', version)
  end
end
return {'OK', tonumber(redis.call('GET', KEYS[1]))}
