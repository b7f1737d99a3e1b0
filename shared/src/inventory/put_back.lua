-- Put back: return one holder's hold on one variant to what it was before a reservation
-- that did not go through (a Redis Cluster reservation takes its variants one call at a
-- time; when one falls short, those already taken are put back, see `Inventory::reserve`).
--
-- KEYS: reserved, holds, hold-qty of the variant
-- ARGV[1]  holder name
-- ARGV[2]  the quantity held before (0: none)
-- ARGV[3]  its deadline (epoch ms)
--
-- Reply: {'OK'}
local holder = ARGV[1]
local quantity, deadline = tonumber(ARGV[2]), tonumber(ARGV[3])
drop_hold(KEYS[1], KEYS[2], KEYS[3], holder)
if quantity > 0 and deadline > now_ms() then
  redis.call('HSET', KEYS[3], holder, quantity)
  redis.call('ZADD', KEYS[2], deadline, holder)
  redis.call('INCRBY', KEYS[1], quantity)
end
return {'OK'}
