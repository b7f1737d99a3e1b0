-- Read a cart.
--
-- KEYS: cart, its checkout lock
-- Replies: cart_snapshot 'OK' | {'NOT_FOUND'} | {'MERGED', customer}
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOT_FOUND'}
end
local merged = redis.call('HGET', KEYS[1], 'merged')
if merged then
  return {'MERGED', merged}
end
return cart_snapshot(KEYS[1], 'OK')
