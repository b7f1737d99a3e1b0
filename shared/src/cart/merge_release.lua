-- Merge, undone between steps 1 and 2: the customer's cart refused the lines (another
-- currency, a checkout under way), so the anonymous cart is the visitor's again, to
-- change, check out or merge later.
--
-- KEYS: anonymous cart, its checkout lock
-- ARGV: customer id
-- Reply: {'OK'}
if redis.call('HGET', KEYS[1], 'merging') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'merging', 'merging_until')
end
return {'OK'}
