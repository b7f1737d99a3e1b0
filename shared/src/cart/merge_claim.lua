-- Merge, step 1 of 3, on the anonymous cart: freeze it for one customer and read it.
-- Once claimed it refuses changes, so every retry of the merge reads the same lines.
--
-- KEYS: anonymous cart, its checkout lock
-- ARGV: customer id, the claim's lease in ms (the longest a request may run: a claim
--       older than that is no merge's any more, `merge_frozen`)
-- Replies: cart_snapshot 'CLAIMED' | {'DONE'} (already merged into this customer)
--        | {'NOT_FOUND'} | {'ELSEWHERE'} (claimed by or merged into another customer)
local key, customer = KEYS[1], ARGV[1]
if redis.call('EXISTS', key) == 0 then
  return {'NOT_FOUND'}
end
local merged = redis.call('HGET', key, 'merged')
if merged then
  return merged == customer and {'DONE'} or {'ELSEWHERE'}
end
local holder = redis.call('GET', KEYS[2])
if holder then
  return {'LOCKED', holder}
end
local merging = redis.call('HGET', key, 'merging')
if merging and merging ~= customer and merge_frozen(key, merging, nil) then
  return {'ELSEWHERE'}
end
redis.call('HSET', key, 'merging', customer, 'merging_until', now_ms() + tonumber(ARGV[2]))
return cart_snapshot(key, 'CLAIMED')
