-- Repair a variant's reserved total: purge its expired holds, drop the held units that
-- have no deadline (a hold whose entry in the holds set was lost: nothing would ever
-- expire it), then set the total to the sum of the holds that remain (for `commerce check
-- --repair`).
--
-- KEYS: reserved, holds, hold-qty
-- Reply: {'OK', reserved after, holds dropped for want of a deadline} | {'RETRY'}
if not purge(KEYS[1], KEYS[2], KEYS[3], now_ms()) then
  return {'RETRY'}
end
local sum, dropped = 0, 0
local held = redis.call('HGETALL', KEYS[3])
for i = 1, #held, 2 do
  if redis.call('ZSCORE', KEYS[2], held[i]) then
    sum = sum + (tonumber(held[i + 1]) or 0)
  else
    redis.call('HDEL', KEYS[3], held[i])
    dropped = dropped + 1
  end
end
if sum > 0 then
  redis.call('SET', KEYS[1], sum)
else
  redis.call('DEL', KEYS[1])
end
return {'OK', sum, dropped}
