-- Commit a placed order's holds: the sold units leave stock (mirroring the PostgreSQL
-- decrement, exactly once, see stock.lua) and the holder's holds are dropped. Safe to
-- run again after a crash or by a duplicate webhook.
--
-- KEYS[1]             the holder's index of held variants (left out on a Redis Cluster,
--                     where each variant is its own call and the caller deletes the index)
-- KEYS[b + 5(i-1)..]  per variant i: stock, reserved, holds, hold-qty, stock-version
--                     (b = 2 with the index, 1 without)
-- ARGV[1]             holder id
-- ARGV[2 + 2(i-1)..]  per variant i: on-hand after, row version
-- A variant whose stock Redis lost is reported first, so the caller loads it from
-- PostgreSQL with the holds of live sessions before anything is committed.
--
-- Reply: {'OK'} | {'MISSING', i, ...} | {'RETRY'}
local holder = ARGV[1]
local b = (#KEYS % 5 == 1) and 2 or 1
local n = math.floor(#KEYS / 5)
local now = now_ms()
local missing = {'MISSING'}
for i = 0, n - 1 do
  if redis.call('EXISTS', KEYS[b + 5 * i]) == 0 then
    missing[#missing + 1] = i
  end
end
if #missing > 1 then
  return missing
end
for i = 0, n - 1 do
  local k = b + 5 * i
  local a = 2 + 2 * i
  purge(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], now)
  drop_hold(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], holder)
  apply_change(KEYS[k], KEYS[k + 4], ARGV[a], tonumber(ARGV[a + 1]))
end
if b == 2 then
  redis.call('DEL', KEYS[1])
end
return {'OK'}
