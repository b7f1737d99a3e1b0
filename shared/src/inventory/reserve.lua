-- Reserve: all-or-nothing holds for one holder (a checkout session or a trusted caller).
--
-- KEYS[1]             the holder's index of held variants (inventory:holder:{H}); left out
--                     on a Redis Cluster, where each variant is its own call (one slot)
--                     and the caller keeps the index (see `Inventory::reserve`)
-- KEYS[b + 5(i-1)..]  per variant i: stock, reserved, holds, hold-qty, max-per-order
--                     (b = 2 with the index, 1 without)
-- ARGV[1]             holder name (`checkout:<id>` | `external:<id>`)
-- ARGV[2]             hold time in milliseconds
-- ARGV[3]             the deadline (epoch ms), or 0: now + hold time on this Redis's clock
--                     (a cluster's later calls pass the first call's deadline, so every
--                     hold of one reservation ends at one moment)
-- ARGV[4 + 2(i-1)..]  per variant i: variant id, quantity
--
-- The quantity SETS the holder's hold (a retry never adds). A variant is granted only if
-- stock - live reserved + this holder's current hold >= quantity, and only if the quantity
-- is within the variant's per-order limit (max-per-order, loaded with the stock), unless
-- it is no more than the holder already holds: extending a live hold, as a checkout's
-- payment intent does, is not taking more. A stock lowered meanwhile does not take back
-- what is held: neither a limit or count an admin lowered, nor the stock an order left
-- in PostgreSQL, which Redis may have before the hold of another order already placed
-- is committed (both count then, for a moment). PostgreSQL's order still refuses what
-- on-hand cannot cover. If any variant is over its limit or falls short, nothing is
-- written.
--
-- Replies (flat): {'OK', deadline_ms, previous quantity_1, previous deadline_1, ...} (what
--                 the holder held before, 0 0 for nothing: a cluster caller puts it back
--                 if a later variant falls short) | {'LIMIT', i, requested, max_per_order, ...}
--                 | {'SHORT', i, requested, sellable, ...} | {'MISSING', i, ...} | {'RETRY'}
local holder = ARGV[1]
local ttl = tonumber(ARGV[2])
local b = (#KEYS % 5 == 1) and 2 or 1
local n = math.floor(#KEYS / 5)
local now = now_ms()

for i = 0, n - 1 do
  local k = b + 5 * i
  if not purge(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], now) then
    return {'RETRY'}
  end
end

-- One pass reads each variant once (stock, live reserved, this holder's hold, its limit);
-- the verdicts are then given in order: MISSING before LIMIT before SHORT.
local missing, over, short = {'MISSING'}, {'LIMIT'}, {'SHORT'}
local current = {}
for i = 0, n - 1 do
  local k = b + 5 * i
  local counts = redis.call('MGET', KEYS[k], KEYS[k + 1])
  local stock = tonumber(counts[1])
  -- The limit's hash always has the version it mirrors: without it, the limit was lost
  -- (not "none"), and the variant is loaded again like a lost stock.
  local limits = redis.call('HMGET', KEYS[k + 4], 'limit', 'version')
  if not stock or not limits[2] then
    missing[#missing + 1] = i
  else
    local reserved = reserved_total(KEYS[k + 1], KEYS[k + 3], counts[2])
    local mine = tonumber(redis.call('HGET', KEYS[k + 3], holder)) or 0
    local limit = tonumber(limits[1])
    local want = tonumber(ARGV[5 + 2 * i])
    if limit and want > limit and want > mine then
      over[#over + 1] = i
      over[#over + 1] = want
      over[#over + 1] = limit
    end
    local sellable = stock - reserved + mine
    if want > sellable and want > mine then
      short[#short + 1] = i
      short[#short + 1] = want
      short[#short + 1] = math.max(sellable, 0)
    end
    current[i] = mine
  end
end
if #missing > 1 then
  return missing
end
if #over > 1 then
  return over
end
if #short > 1 then
  return short
end

local deadline = tonumber(ARGV[3])
if deadline == 0 then
  deadline = now + ttl
end
local out = {'OK', deadline}
for i = 0, n - 1 do
  local k = b + 5 * i
  local want = tonumber(ARGV[5 + 2 * i])
  out[#out + 1] = current[i]
  out[#out + 1] = current[i] > 0 and tonumber(redis.call('ZSCORE', KEYS[k + 2], holder)) or 0
  redis.call('HSET', KEYS[k + 3], holder, want)
  redis.call('ZADD', KEYS[k + 2], deadline, holder)
  if want ~= current[i] then
    redis.call('INCRBY', KEYS[k + 1], want - current[i])
  end
  if b == 2 then
    redis.call('SADD', KEYS[1], ARGV[4 + 2 * i])
  end
end
-- The index lives as long as the holder's latest hold.
if b == 2 then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl < 0 or now + pttl < deadline then
    redis.call('PEXPIREAT', KEYS[1], deadline)
  end
end
return out
