-- Change one line of a cart: add units ('add') or set the quantity ('set', 0 removes).
--
-- KEYS: cart, its checkout lock
-- ARGV: op, line id, definition JSON, quantity, max lines, max quantity, ttl_ms,
--       expected version ('' = any), create if missing ('1' for customers' carts),
--       currency for a new cart, customer id ('' = anonymous)
--
-- Every change bumps `version` (noting when: `written`) and slides the cart's time to live.
-- Replies: cart_snapshot 'OK' | {'NOT_FOUND'} | {'MERGED'} | {'VERSION', current}
--        | {'LIMIT', 'lines'|'quantity', max} | {'NO_LINE'} | {'LOCKED', session}
local key = KEYS[1]
local op, line, definition = ARGV[1], ARGV[2], ARGV[3]
local qty, max_lines, max_qty = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, expected = tonumber(ARGV[7]), ARGV[8]
local field = 'q:' .. line

-- Everything the change decides on, in one read (every cart has a version, except the
-- mark a merged cart leaves, which has only `merged`).
local read = redis.call('HMGET', key, 'version', 'merging', 'merged', field, 'lines', 'seq')
if merge_frozen(key, read[2], read[3]) then
  return {'MERGED'}
end
if not read[1] then
  if ARGV[9] == '1' and op == 'add' and (expected == '' or expected == '0') then
    create(key, ARGV[10], ARGV[11], ttl)
    read = {'0', false, false, false, '0', '0'}
  elseif ARGV[9] == '1' and expected ~= '' and expected ~= '0' then
    return {'VERSION', 0}
  else
    return {'NOT_FOUND'}
  end
end
local holder = redis.call('GET', KEYS[2])
if holder then
  return {'LOCKED', holder}
end
local version = read[1]
if expected ~= '' and version ~= expected then
  return {'VERSION', tonumber(version)}
end

-- The change and the new version, written at once.
local current, lines = tonumber(read[4]) or 0, tonumber(read[5]) or 0
local write = {'version', tonumber(version) + 1, 'written', now_written()}
if op == 'add' then
  local fields, refused = line_added(line, definition, qty, current, lines, tonumber(read[6]) or 0,
    max_lines, max_qty)
  if refused then
    return refused
  end
  for _, v in ipairs(fields) do
    write[#write + 1] = v
  end
else
  if not read[4] then
    return {'NO_LINE'}
  end
  if qty == 0 then
    redis.call('HDEL', key, field, 'd:' .. line, 'o:' .. line)
    write[#write + 1] = 'lines'
    write[#write + 1] = lines - 1
  elseif qty > max_qty then
    return {'LIMIT', 'quantity', max_qty}
  else
    write[#write + 1] = field
    write[#write + 1] = qty
  end
end
redis.call('HSET', key, unpack(write))
redis.call('PEXPIRE', key, ttl)
return cart_snapshot(key, 'OK', nil, ttl)
