-- Apply stock change: mirror one committed PostgreSQL change of on-hand into Redis,
-- exactly once (see stock.lua).
--
-- KEYS: stock, stock-version
-- ARGV: delta, on-hand after the change, row version of the change
-- Reply: {'OK', stock}
apply_change(KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]))
return {'OK', tonumber(redis.call('GET', KEYS[1]))}
