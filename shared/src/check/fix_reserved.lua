-- Repair a variant's reserved total: purge its expired holds, then set the total to the
-- sum of the holds that remain (for `commerce check --repair`).
--
-- KEYS: reserved, holds, hold-qty
-- Reply: {'OK', reserved after} | {'RETRY'}
if not purge(KEYS[1], KEYS[2], KEYS[3], now_ms()) then
  return {'RETRY'}
end
local sum = 0
for _, qty in ipairs(redis.call('HVALS', KEYS[3])) do
  sum = sum + (tonumber(qty) or 0)
end
if sum > 0 then
  redis.call('SET', KEYS[1], sum)
else
  redis.call('DEL', KEYS[1])
end
return {'OK', sum}
