-- Shared head of every inventory script: the purge of expired holds.
--
-- Expired holds are dropped by whichever script next touches the variant, so an expired
-- hold never counts, with or without a sweeper. The work per call is bounded: after
-- PURGE_BUDGET holds the purge reports that expired holds remain, and the script answers
-- {'RETRY'} before deciding anything, so the caller simply runs it again.

local PURGE_BUDGET = 500
local budget = PURGE_BUDGET

-- A variant's holds are two keys written together: their deadlines (`holds`) and their
-- quantities (`hold-qty`). One lost without the other (deleted, evicted) leaves holds that
-- would never expire (quantities without deadlines) or a reserved total nobody holds
-- (deadlines without quantities): either way those holds are dropped as expired, with
-- the total. One call when both keys or neither exist (every normal case).
local function drop_half_holds(reserved, holds, hold_qty)
  if redis.call('EXISTS', holds, hold_qty) == 1 then
    redis.call('DEL', holds, hold_qty, reserved)
  end
end

-- Drops the variant's holds whose deadline is at or before `now` (and those that lost
-- their deadline or quantity). Returns true when no expired hold is left, false when the
-- budget ran out first.
local function purge(reserved, holds, hold_qty, now)
  drop_half_holds(reserved, holds, hold_qty)
  while true do
    if budget <= 0 then
      return redis.call('ZCOUNT', holds, '-inf', now) == 0
    end
    local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, budget)
    if #expired == 0 then
      return true
    end
    local freed = 0
    for _, qty in ipairs(redis.call('HMGET', hold_qty, unpack(expired))) do
      freed = freed + (tonumber(qty) or 0)
    end
    redis.call('HDEL', hold_qty, unpack(expired))
    redis.call('ZREM', holds, unpack(expired))
    if freed > 0 and redis.call('DECRBY', reserved, freed) <= 0 then
      redis.call('DEL', reserved)
    end
    budget = budget - #expired
  end
end

-- The variant's live reserved total, from its stored value `stored` (the reserved key's
-- GET). A total that is missing while holds remain (a key deleted by hand, a partial
-- restore) is rebuilt from the holds and written back, so it never counts as 0 and the
-- holds are never sold again; with no holds, a missing total is 0.
local function reserved_total(reserved, hold_qty, stored)
  local total = tonumber(stored)
  if total then
    return total
  end
  total = 0
  for _, qty in ipairs(redis.call('HVALS', hold_qty)) do
    total = total + (tonumber(qty) or 0)
  end
  if total > 0 then
    redis.call('SET', reserved, total)
  end
  return total
end

-- Removes one holder's hold on a variant and returns the quantity it held.
local function drop_hold(reserved, holds, hold_qty, holder)
  local held = tonumber(redis.call('HGET', hold_qty, holder)) or 0
  -- Its deadline goes in any case: one left without its quantity (an entry lost alone)
  -- holds nothing and would otherwise stay until it expires.
  redis.call('ZREM', holds, holder)
  if held > 0 then
    redis.call('HDEL', hold_qty, holder)
    if redis.call('DECRBY', reserved, held) <= 0 then
      redis.call('DEL', reserved)
    end
  end
  return held
end

