-- Merge, step 3 of 3, on the anonymous cart: replace it by a tombstone naming the
-- customer, so a late retry answers with the customer's cart instead of 404.
--
-- KEYS: anonymous cart
-- ARGV: customer id, tombstone ttl_ms
-- Reply: {'OK'} | {'ELSEWHERE'}
local key, customer = KEYS[1], ARGV[1]
local owner = redis.call('HGET', key, 'merging') or redis.call('HGET', key, 'merged')
if owner and owner ~= customer then
  return {'ELSEWHERE'}
end
redis.call('DEL', key)
redis.call('HSET', key, 'merged', customer)
redis.call('PEXPIRE', key, tonumber(ARGV[2]))
return {'OK'}
