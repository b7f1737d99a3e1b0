-- Lock a cart for a checkout session and read it (the cart and its lock share a slot).
--
-- KEYS: cart, lock
-- ARGV: session id, lock time to live (ms)
-- A lock already held by this session is taken again (a retry resumes).
-- Replies: cart_snapshot 'OK' | {'HELD', session} | {'NO_CART'} | {'EMPTY'} | {'MERGED'}
local cart, lock, session = KEYS[1], KEYS[2], ARGV[1]
local holder = redis.call('GET', lock)
if holder and holder ~= session then
  return {'HELD', holder}
end
-- One read of what decides (every cart has a version, except the mark a merged cart
-- leaves, which has only `merged`).
local read = redis.call('HMGET', cart, 'version', 'merging', 'merged', 'lines')
if merge_frozen(cart, read[2], read[3]) then
  return {'MERGED'}
end
if not read[1] then
  return {'NO_CART'}
end
if (tonumber(read[4]) or 0) == 0 then
  return {'EMPTY'}
end
redis.call('SET', lock, session, 'PX', tonumber(ARGV[2]))
return cart_snapshot(cart, 'OK')
