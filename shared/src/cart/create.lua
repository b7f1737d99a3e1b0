-- Create an empty anonymous cart.
--
-- KEYS: cart, its checkout lock
-- ARGV: currency, ttl_ms
-- Replies: cart_snapshot 'OK' | {'EXISTS'}
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'EXISTS'}
end
create(KEYS[1], ARGV[1], '', tonumber(ARGV[2]))
return cart_snapshot(KEYS[1], 'OK', nil, tonumber(ARGV[2]))
