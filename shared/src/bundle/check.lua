-- Check a bundle line's choices against the cached sets.
--
-- KEYS[1..2]   sets, generation
-- KEYS[3..]    eligibility key of each chosen set, in the order of ARGV
-- ARGV         per chosen set: set id, variant count, variant ids...
--
-- Every set of the bundle must be chosen, with exactly `choose` distinct eligible variants.
-- Replies: {'OK'} | {'MISSING', generation}
--        | {'INVALID', set id, reason, detail} with reason one of
--          'missing' (set not chosen), 'unknown' (no such set), 'count' (detail: choose),
--          'ineligible' (detail: the variant)
--        | {'LOST', set id, 'ineligible', variant, generation}: the set's eligibility key
--          is gone while the rest of the bundle is cached (Redis lost or evicted it), so a
--          variant not found in it may be eligible: the caller reloads the bundle, and only
--          a set still without its key after that (one with no eligible variant) refuses.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'MISSING', tonumber(redis.call('GET', KEYS[2])) or 0}
end
local chosen = {}
local at = 1
for k = 3, #KEYS do
  local set, count = ARGV[at], tonumber(ARGV[at + 1])
  chosen[set] = true
  local choose = redis.call('HGET', KEYS[1], set)
  if not choose then
    return {'INVALID', set, 'unknown', ''}
  end
  if tonumber(choose) ~= count then
    return {'INVALID', set, 'count', choose}
  end
  for i = at + 2, at + 1 + count do
    if redis.call('SISMEMBER', KEYS[k], ARGV[i]) == 0 then
      if redis.call('EXISTS', KEYS[k]) == 0 then
        return {'LOST', set, 'ineligible', ARGV[i], tonumber(redis.call('GET', KEYS[2])) or 0}
      end
      return {'INVALID', set, 'ineligible', ARGV[i]}
    end
  end
  at = at + 2 + count
end
for _, set in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not chosen[set] then
    return {'INVALID', set, 'missing', ''}
  end
end
return {'OK'}
