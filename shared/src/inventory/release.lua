-- Release: drop every hold of one holder.
--
-- KEYS[1]             the holder's index of held variants (left out on a Redis Cluster,
--                     where each variant is its own call and the caller deletes the index)
-- KEYS[b + 4(i-1)..]  per variant i named in the index: stock, reserved, holds, hold-qty
--                     (b = 2 with the index, 1 without)
-- ARGV[1]             holder id
--
-- Reply: {'OK', units released}
local holder = ARGV[1]
local b = (#KEYS % 4 == 1) and 2 or 1
local n = math.floor(#KEYS / 4)
local now = now_ms()
local released = 0
for i = 0, n - 1 do
  local k = b + 4 * i
  -- Purging others' expired holds here is housekeeping; this holder's hold is dropped
  -- whether or not the budget lasts.
  purge(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], now)
  released = released + drop_hold(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], holder)
end
if b == 2 then
  redis.call('DEL', KEYS[1])
end
return {'OK', released}
