-- Check page: what Redis holds for a batch of variants, for `commerce check`. Reads only.
--
-- KEYS[1 + 6(i-1)..]  per variant i: stock, stock-version, reserved, holds, hold-qty,
--                     max-per-order
-- Reply (flat): {'OK', now, then per variant: present (0/1), stock, the row version it
--                mirrors (stock-version `max`), limit (0: none), reserved, live held (sum
--                of unexpired hold quantities), n, n times (holder, qty)}
local now = now_ms()
local out = {'OK', now}
for i = 0, #KEYS / 6 - 1 do
  local stock, meta = KEYS[1 + 6 * i], KEYS[2 + 6 * i]
  local reserved, holds, hold_qty = KEYS[3 + 6 * i], KEYS[4 + 6 * i], KEYS[5 + 6 * i]
  local value = redis.call('GET', stock)
  out[#out + 1] = value and 1 or 0
  out[#out + 1] = tonumber(value) or 0
  out[#out + 1] = tonumber(redis.call('HGET', meta, 'max')) or 0
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[6 + 6 * i], 'limit')) or 0
  out[#out + 1] = tonumber(redis.call('GET', reserved)) or 0
  local live = {}
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', holds, '(' .. now, '+inf')) do
    live[#live + 1] = holder
  end
  local quantities = call_each('HMGET', hold_qty, live)
  local sum = 0
  for j = 1, #live do
    sum = sum + (tonumber(quantities[j]) or 0)
  end
  -- Expired holds not yet purged still count in `reserved` until a script purges them.
  local expired = 0
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do
    expired = expired + (tonumber(redis.call('HGET', hold_qty, holder)) or 0)
  end
  out[#out + 1] = sum + expired
  out[#out + 1] = #live
  for j = 1, #live do
    out[#out + 1] = live[j]
    out[#out + 1] = tonumber(quantities[j]) or 0
  end
end
return out
