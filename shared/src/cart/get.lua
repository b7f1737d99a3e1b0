-- Read a cart.
--
-- KEYS: cart, its checkout lock
-- ARGV: optionally, an anonymous cart merged into this customer's cart: the reply then
--       names the lines that merge dropped and capped (a retried merge's answer)
-- Replies: cart_snapshot 'OK' | {'NOT_FOUND'} | {'MERGED', customer}
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'NOT_FOUND'}
end
local merged = redis.call('HGET', KEYS[1], 'merged')
if merged then
  return {'MERGED', merged}
end
if ARGV[1] then
  return merged_snapshot(KEYS[1], ARGV[1])
end
return cart_snapshot(KEYS[1], 'OK')
