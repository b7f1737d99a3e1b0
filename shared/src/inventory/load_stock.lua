-- Load stock: write PostgreSQL's on-hand into Redis, for variants whose stock key is
-- missing (mode 'fill', the lazy load) or for all (mode 'force', reconcile).
--
-- KEYS[1 + 2(i-1)..]  per variant i: stock, stock-version
-- ARGV[1]             'fill' | 'force'
-- ARGV[2 + 2(i-1)..]  per variant i: on-hand, row version
--
-- The stock-version hash (see stock.lua) restarts at the row version the value was read
-- at. A forced load older than a change already applied would undo it, so it is refused
-- (-1) and the caller reads PostgreSQL again.
--
-- Reply: {'OK', r_1, ...} with r = 1 written, 0 kept (fill, key present), -1 stale
local force = ARGV[1] == 'force'
local out = {'OK'}
for i = 0, #KEYS / 2 - 1 do
  local stock, meta = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local on_hand, version = ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])
  local present = redis.call('EXISTS', stock) == 1
  local result = 0
  if not present then
    result = 1
  elseif force then
    local applied = tonumber(redis.call('HGET', meta, 'max')) or 0
    result = (version >= applied) and 1 or -1
  end
  if result == 1 then
    redis.call('SET', stock, on_hand)
    redis.call('DEL', meta)
    redis.call('HSET', meta, 'base', version, 'max', version)
  end
  out[#out + 1] = result
end
return out
