-- Sweep: purge one variant's expired holds (the idle variants nobody touches).
--
-- KEYS: reserved, holds, hold-qty
-- Reply: {'OK', holds left} | {'RETRY'}
if not purge(KEYS[1], KEYS[2], KEYS[3], now_ms()) then
  return {'RETRY'}
end
return {'OK', redis.call('ZCARD', KEYS[2])}
