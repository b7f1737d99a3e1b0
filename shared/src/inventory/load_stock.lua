-- Load stock: write PostgreSQL's on-hand and per-order limit into Redis, for variants
-- whose stock key (or limit) is missing (mode 'fill', the lazy load) or for all (mode
-- 'force', reconcile; 'rewind', a repair that found Redis ahead of PostgreSQL's rows),
-- and put back
-- the holds of live paid checkout sessions that PostgreSQL keeps (DESIGN §4, invariant 8),
-- so units a paying customer holds are not sold again after Redis lost them.
--
-- KEYS[1 + 6(i-1)..]  per variant i: stock, stock-version, reserved, holds, hold-qty,
--                     max-per-order
-- ARGV[1]             'fill' | 'force' | 'rewind'
-- then per variant i: on-hand, row version, limit (0: none), n, and n times (holder,
--                     quantity, deadline ms)
--
-- The stock-version hash (see stock.lua) restarts at the row version the value was read
-- at. A forced load older than a change already applied would undo it, so it is refused
-- (-1) and the caller reads PostgreSQL again; if PostgreSQL's row has not moved since,
-- Redis's version is from a row PostgreSQL no longer has, and the caller rewinds. A hold
-- is put back only where the holder has none on the variant and its deadline is still
-- ahead on the Redis clock.
--
-- Reply: {'OK', r_1, ...} with r = 1 written, 0 kept (fill, key present), -1 stale
local force, rewind = ARGV[1] == 'force', ARGV[1] == 'rewind'
local now = now_ms()
local out = {'OK'}
local a = 2
for i = 0, #KEYS / 6 - 1 do
  local stock, meta = KEYS[1 + 6 * i], KEYS[2 + 6 * i]
  local reserved, holds, hold_qty = KEYS[3 + 6 * i], KEYS[4 + 6 * i], KEYS[5 + 6 * i]
  local on_hand, version = ARGV[a], tonumber(ARGV[a + 1])
  local limit, n = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local first_hold = a + 4
  a = first_hold + 3 * n
  local present = redis.call('EXISTS', stock) == 1
  local result = 0
  if rewind then
    result = 1
  elseif force then
    -- What Redis applied: the stock's version, and the limit's (a limit hash left ahead
    -- of PostgreSQL's rows, its stock lost or not, is refused as well, then rewound).
    local applied = present and (tonumber(redis.call('HGET', meta, 'max')) or 0) or 0
    local limit_applied = tonumber(redis.call('HGET', KEYS[6 + 6 * i], 'version')) or 0
    result = (version >= math.max(applied, limit_applied)) and 1 or -1
  elseif not present then
    result = 1
  end
  -- A limit lost alone (its hash without the version it mirrors) is put back on its own,
  -- whatever the stock's version: the stock Redis has is left as it is.
  if result ~= 1 and redis.call('HEXISTS', KEYS[6 + 6 * i], 'version') == 0 then
    set_limit(KEYS[6 + 6 * i], limit, version)
  end
  if result == 1 then
    redis.call('SET', stock, on_hand)
    redis.call('DEL', meta)
    redis.call('HSET', meta, 'base', version, 'max', version)
    -- Rewound, the limit's own version is as far ahead as the stock's was.
    if rewind then
      redis.call('DEL', KEYS[6 + 6 * i])
    end
    set_limit(KEYS[6 + 6 * i], limit, version)
    purge(reserved, holds, hold_qty, now)
    reserved_total(reserved, hold_qty, redis.call('GET', reserved))
    for h = first_hold, first_hold + 3 * (n - 1), 3 do
      local holder, qty, deadline = ARGV[h], tonumber(ARGV[h + 1]), tonumber(ARGV[h + 2])
      if deadline > now and redis.call('HEXISTS', hold_qty, holder) == 0 then
        redis.call('HSET', hold_qty, holder, qty)
        redis.call('ZADD', holds, deadline, holder)
        redis.call('INCRBY', reserved, qty)
      end
    end
  end
  out[#out + 1] = result
end
return out
