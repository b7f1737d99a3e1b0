-- After the order: empty the checked-out cart and release its lock, unless another
-- session holds the cart by now.
--
-- KEYS: cart, lock
-- ARGV: session id
-- Replies: {'OK'} | {'SKIPPED'}
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
  return {'SKIPPED'}
end
redis.call('DEL', KEYS[1])
if holder then
  redis.call('DEL', KEYS[2])
end
return {'OK'}
