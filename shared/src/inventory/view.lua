-- View: stock, live reserved units and per-order limit of a batch of variants, in one
-- round trip.
--
-- KEYS[1 + 5(i-1)..]  per variant i: stock, reserved, holds, hold-qty, max-per-order
--
-- Replies (flat): {'OK', stock_1, reserved_1, limit_1 (0: none), ...} | {'MISSING', i, ...}
--                 | {'RETRY'}
local n = #KEYS / 5
local now = now_ms()
local out = {'OK'}
local missing = {'MISSING'}
for i = 0, n - 1 do
  local k = 1 + 5 * i
  if not purge(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], now) then
    return {'RETRY'}
  end
  local stock = redis.call('GET', KEYS[k])
  -- A limit's hash without its version was lost: loaded again, like a lost stock.
  local limits = redis.call('HMGET', KEYS[k + 4], 'limit', 'version')
  if not stock or not limits[2] then
    missing[#missing + 1] = i
  end
  out[#out + 1] = tonumber(stock) or 0
  out[#out + 1] = reserved_total(KEYS[k + 1], KEYS[k + 3], redis.call('GET', KEYS[k + 1]))
  out[#out + 1] = tonumber(limits[1]) or 0
end
if #missing > 1 then
  return missing
end
return out
