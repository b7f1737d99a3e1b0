-- The prelude of every script: `lua!` (shared/src/script.rs) puts it in front of each
-- script's own files, so a helper that several scripts need is written once.

-- Now, in epoch milliseconds of the Redis server's clock: the one clock of every expiry
-- decision (DESIGN §2), whichever node the script runs on.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Now as the instant a cart's version was written (its `written` field): seconds and
-- microseconds of the Redis clock, as text. A version number that a Redis rolled back
-- (an older backup, an AOF's lost second) gives again to other lines is written at
-- another instant: another cart.
local function now_written()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end

-- Runs `command key list[first..last]` (the whole list without bounds) a thousand values
-- at a time, and returns the replies' elements joined, in order (HMGET's, say): Lua's
-- unpack gives at most about 8000 values, and a cart, a bundle set or a variant's holds
-- may name more.
local function call_each(command, key, list, first, last)
  first, last = first or 1, last or #list
  local joined = {}
  for i = first, last, 1000 do
    local reply = redis.call(command, key, unpack(list, i, math.min(i + 999, last)))
    if type(reply) == 'table' then
      for j = 1, #reply do
        joined[#joined + 1] = reply[j]
      end
    end
  end
  return joined
end

