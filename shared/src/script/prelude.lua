-- The prelude of every script: `lua!` (shared/src/script.rs) puts it in front of each
-- script's own files, so a helper that several scripts need is written once.

-- Now, in epoch milliseconds of the Redis server's clock: the one clock of every expiry
-- decision (DESIGN §2), whichever node the script runs on.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

