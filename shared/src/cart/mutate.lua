-- Change one line of a cart: add units ('add') or set the quantity ('set', 0 removes).
--
-- KEYS: cart, its checkout lock
-- ARGV: op, line id, definition JSON, quantity, max lines, max quantity, ttl_ms,
--       expected version ('' = any), create if missing ('1' for customers' carts),
--       currency for a new cart, customer id ('' = anonymous)
--
-- Every change bumps `version` and slides the cart's time to live.
-- Replies: cart_snapshot 'OK' | {'NOT_FOUND'} | {'MERGED'} | {'VERSION', current}
--        | {'LIMIT', 'lines'|'quantity', max} | {'NO_LINE'} | {'LOCKED', session}
local key = KEYS[1]
local op, line, definition = ARGV[1], ARGV[2], ARGV[3]
local qty, max_lines, max_qty = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ttl, expected = tonumber(ARGV[7]), ARGV[8]

if redis.call('EXISTS', key) == 0 then
  if ARGV[9] == '1' and op == 'add' and (expected == '' or expected == '0') then
    create(key, ARGV[10], ARGV[11], ttl)
  elseif ARGV[9] == '1' and expected ~= '' and expected ~= '0' then
    return {'VERSION', 0}
  else
    return {'NOT_FOUND'}
  end
end
if redis.call('HEXISTS', key, 'merging') == 1 or redis.call('HEXISTS', key, 'merged') == 1 then
  return {'MERGED'}
end
local holder = redis.call('GET', KEYS[2])
if holder then
  return {'LOCKED', holder}
end
local version = redis.call('HGET', key, 'version')
if expected ~= '' and version ~= expected then
  return {'VERSION', tonumber(version)}
end

if op == 'add' then
  local refused = add_line(key, line, definition, qty, max_lines, max_qty)
  if refused then
    return refused
  end
else
  local field = 'q:' .. line
  if redis.call('HEXISTS', key, field) == 0 then
    return {'NO_LINE'}
  end
  if qty == 0 then
    redis.call('HDEL', key, field, 'd:' .. line, 'o:' .. line)
    redis.call('HINCRBY', key, 'lines', -1)
  elseif qty > max_qty then
    return {'LIMIT', 'quantity', max_qty}
  else
    redis.call('HSET', key, field, qty)
  end
end
redis.call('HINCRBY', key, 'version', 1)
redis.call('PEXPIRE', key, ttl)
return cart_snapshot(key, 'OK')
