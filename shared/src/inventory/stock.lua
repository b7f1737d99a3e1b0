-- Shared head of the scripts that mirror committed PostgreSQL stock changes into Redis.
--
-- PostgreSQL commits every change of on-hand first, bumps the row's version and says what
-- on-hand is after it. Redis keeps the on-hand of the newest version it has seen (the
-- stock-version hash: `base` and `max`, both that version): a change of a newer version
-- sets the stock to its on-hand, one of that version or an older one changes nothing.
-- So each change counts exactly once, whatever order changes arrive in and however often
-- they are retried, and a change that never reached Redis (Redis failed after PostgreSQL
-- committed) is contained in the next one: Redis is never wrong past the next change.

local function apply_change(stock, meta, on_hand, version)
  if redis.call('EXISTS', stock) == 1 and version <= (tonumber(redis.call('HGET', meta, 'max')) or 0) then
    return
  end
  redis.call('SET', stock, on_hand)
  redis.call('HSET', meta, 'base', version, 'max', version)
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
