-- Shared head of the cart scripts.
--
-- A cart is one hash: `version` (and `written`, when that version was written), `currency`,
-- `created`, `lines` (count), `seq`, optional `customer`, and per line `q:<line>` (quantity), `d:<line>` (definition JSON) and
-- `o:<line>` (position). `merging` / `merged` freeze an anonymous cart being merged into
-- a customer's; `m:<cart>` marks, in a customer's cart, an anonymous cart merged into it.

-- {status, now_ms, pttl, #dropped, dropped..., #capped, capped..., field, value, ...};
-- `pttl`: the time to live the caller just set (read from Redis when nil); `dropped` and
-- `capped`: the lines a merge could not add, or added only up to the quantity limit.
local function cart_snapshot(key, status, dropped, pttl, capped)
  local out = {status, now_ms(), pttl or redis.call('PTTL', key)}
  for _, lines in ipairs({dropped or {}, capped or {}}) do
    out[#out + 1] = #lines
    for _, line in ipairs(lines) do
      out[#out + 1] = line
    end
  end
  for _, item in ipairs(redis.call('HGETALL', key)) do
    out[#out + 1] = item
  end
  return out
end

-- The marker `m:<from>` a merge of anonymous cart `from` leaves in the customer's cart:
-- the lines it dropped and capped (`dropped ids|capped ids`, comma-separated), so that a
-- retry answers what the merge answered.
local function merge_marker(dropped, capped)
  return table.concat(dropped, ',') .. '|' .. table.concat(capped, ',')
end

-- The customer's cart as the merge of `from` answered it: its snapshot with the lines that
-- merge dropped and capped, read back from its marker (an older marker, `1`, kept none).
local function merged_snapshot(key, from)
  local kept = redis.call('HGET', key, 'm:' .. from) or ''
  local dropped, capped = string.match(kept, '^([^|]*)|(.*)$')
  local function ids(text)
    local out = {}
    for id in string.gmatch(text or '', '[^,]+') do
      out[#out + 1] = id
    end
    return out
  end
  return cart_snapshot(key, 'OK', ids(dropped), nil, ids(capped))
end

-- Whether a merge freezes the cart: merged into a customer's, or claimed by a merge whose
-- lease (`merging_until`, Redis clock: the claim's time plus the longest a request may
-- run) has not run out. A claim past its lease belongs to a merge whose request ended
-- between its steps (a 503, a crash): it is dropped here, and the cart is its visitor's
-- again (a retry of that merge claims it anew; its customer's cart takes its lines once).
local function merge_frozen(key, merging, merged)
  if merged then
    return true
  end
  if not merging then
    return false
  end
  local until_ms = tonumber(redis.call('HGET', key, 'merging_until'))
  if until_ms and until_ms <= now_ms() then
    redis.call('HDEL', key, 'merging', 'merging_until')
    return false
  end
  return true
end

local function create(key, currency, customer, ttl)
  redis.call('HSET', key, 'version', 0, 'currency', currency, 'created', now_ms(), 'lines', 0, 'seq', 0)
  if customer ~= '' then
    redis.call('HSET', key, 'customer', customer)
  end
  redis.call('PEXPIRE', key, ttl)
end

-- What adding `qty` units of a line writes, to a cart that holds `current` of it, `lines`
-- lines and `seq` as its last position: the field, value pairs (the line's quantity, and for
-- a new line its definition, position and the counts), or nil and the refusal reply.
local function line_added(line, definition, qty, current, lines, seq, max_lines, max_qty)
  if current == 0 and lines >= max_lines then
    return nil, {'LIMIT', 'lines', max_lines}
  end
  if current + qty > max_qty then
    return nil, {'LIMIT', 'quantity', max_qty}
  end
  local fields = {'q:' .. line, current + qty}
  if current == 0 then
    for _, v in ipairs({'d:' .. line, definition, 'o:' .. line, seq + 1, 'seq', seq + 1, 'lines', lines + 1}) do
      fields[#fields + 1] = v
    end
  end
  return fields
end

-- Adds `qty` units of a line (creating it if new). Returns nil, or the refusal reply.
local function add_line(key, line, definition, qty, max_lines, max_qty)
  local read = redis.call('HMGET', key, 'q:' .. line, 'lines', 'seq')
  local fields, refused = line_added(line, definition, qty, tonumber(read[1]) or 0,
    tonumber(read[2]) or 0, tonumber(read[3]) or 0, max_lines, max_qty)
  if refused then
    return refused
  end
  redis.call('HSET', key, unpack(fields))
  return nil
end

