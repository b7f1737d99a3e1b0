-- Apply stock change: mirror one committed PostgreSQL change of on-hand and of the
-- per-order limit into Redis, exactly once (see stock.lua).
--
-- KEYS: stock, stock-version, max-per-order
-- ARGV: on-hand after the change, row version of the change, the limit at that version
--       (0: none)
-- A stock key Redis lost is not written here: the caller loads it from PostgreSQL with
-- the holds of live sessions (load_stock.lua), which includes this change.
--
-- Reply: {'OK', stock} | {'MISSING', 0}
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'MISSING', 0}
end
apply_change(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
set_limit(KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[2]))
return {'OK', tonumber(redis.call('GET', KEYS[1]))}
