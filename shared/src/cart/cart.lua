-- Shared head of the cart scripts.
--
-- A cart is one hash: `version`, `currency`, `created`, `lines` (count), `seq`, optional
-- `customer`, and per line `q:<line>` (quantity), `d:<line>` (definition JSON) and
-- `o:<line>` (position). `merging` / `merged` freeze an anonymous cart being merged into
-- a customer's; `m:<cart>` marks, in a customer's cart, an anonymous cart merged into it.

-- {status, now_ms, pttl, #dropped, dropped..., field, value, ...}; `pttl`: the time to
-- live the caller just set (read from Redis when nil).
local function cart_snapshot(key, status, dropped, pttl)
  dropped = dropped or {}
  local out = {status, now_ms(), pttl or redis.call('PTTL', key), #dropped}
  for _, line in ipairs(dropped) do
    out[#out + 1] = line
  end
  for _, item in ipairs(redis.call('HGETALL', key)) do
    out[#out + 1] = item
  end
  return out
end

local function create(key, currency, customer, ttl)
  redis.call('HSET', key, 'version', 0, 'currency', currency, 'created', now_ms(), 'lines', 0, 'seq', 0)
  if customer ~= '' then
    redis.call('HSET', key, 'customer', customer)
  end
  redis.call('PEXPIRE', key, ttl)
end

-- Adds `qty` units of a line (creating it if new). Returns nil, or the refusal reply.
local function add_line(key, line, definition, qty, max_lines, max_qty)
  local field = 'q:' .. line
  local current = tonumber(redis.call('HGET', key, field)) or 0
  if current == 0 then
    if tonumber(redis.call('HGET', key, 'lines')) >= max_lines then
      return {'LIMIT', 'lines', max_lines}
    end
  end
  if current + qty > max_qty then
    return {'LIMIT', 'quantity', max_qty}
  end
  if current == 0 then
    redis.call('HSET', key, 'd:' .. line, definition, 'o:' .. line, redis.call('HINCRBY', key, 'seq', 1))
    redis.call('HINCRBY', key, 'lines', 1)
  end
  redis.call('HSET', key, field, current + qty)
  return nil
end

