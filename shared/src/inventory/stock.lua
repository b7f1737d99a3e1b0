-- Shared head of the scripts that mirror committed PostgreSQL stock changes into Redis.
--
-- PostgreSQL commits every change of on-hand first and bumps the row's version. The
-- stock-version hash records which versions the Redis stock reflects: `base` (every
-- version up to it is in), `max` (the highest one in), and `v:<n>` for versions above
-- `base` applied out of order. So each change is applied exactly once, whatever races it
-- and however often it is retried: a missing key takes the absolute value; a version
-- already in is skipped; otherwise the delta is added.

local function apply_change(stock, meta, delta, on_hand, version)
  if redis.call('EXISTS', stock) == 0 then
    redis.call('SET', stock, on_hand)
    redis.call('DEL', meta)
    redis.call('HSET', meta, 'base', version, 'max', version)
    return
  end
  local read = redis.call('HMGET', meta, 'base', 'max', 'v:' .. version)
  local base, max = tonumber(read[1]) or 0, tonumber(read[2]) or 0
  if version <= base or read[3] then
    return
  end
  redis.call('INCRBY', stock, delta)
  if version > base + 1 then
    -- Out of order: recorded above the watermark until the versions below it are in.
    redis.call('HSET', meta, 'v:' .. version, 1, 'max', math.max(max, version))
    return
  end
  -- The next version (the usual case): the watermark moves over it and over every later
  -- version already in, which exist only when `max` is above it.
  base = version
  while max > base and redis.call('HEXISTS', meta, 'v:' .. (base + 1)) == 1 do
    redis.call('HDEL', meta, 'v:' .. (base + 1))
    base = base + 1
  end
  redis.call('HSET', meta, 'base', base, 'max', math.max(max, version))
end


-- Mirrors a variant's per-order purchase limit (0: none) as PostgreSQL had it at row
-- `version`, unless the limit of a later version is already in: a limit changes only
-- with a version, so the newest version's limit is the one that holds.
local function set_limit(key, limit, version)
  if version < (tonumber(redis.call('HGET', key, 'version')) or 0) then
    return
  end
  redis.call('HSET', key, 'version', version)
  if limit > 0 then
    redis.call('HSET', key, 'limit', limit)
  else
    redis.call('HDEL', key, 'limit')
  end
end
