-- Release: drop every hold of one holder.
--
-- KEYS[1]             the holder's index of held variants
-- KEYS[2 + 4(i-1)..]  per variant i named in the index: stock, reserved, holds, hold-qty
-- ARGV[1]             holder id
--
-- Reply: {'OK', units released}
local holder = ARGV[1]
local n = (#KEYS - 1) / 4
local now = now_ms()
local released = 0
for i = 0, n - 1 do
  local k = 2 + 4 * i
  -- Purging others' expired holds here is housekeeping; this holder's hold is dropped
  -- whether or not the budget lasts.
  purge(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], now)
  released = released + drop_hold(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], holder)
end
redis.call('DEL', KEYS[1])
return {'OK', released}
