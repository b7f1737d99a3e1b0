-- Shared head of the checkout session scripts.
--
-- A session is one hash: id, cart, state, version (bumped by every transition: the fence
-- the order write carries), deadline (ms, Redis clock), total, currency, created,
-- history (JSON [{state, at}]), and later intent, order, refund.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- {status, JSON of the whole hash}
local function snapshot(key, status)
  local flat = redis.call('HGETALL', key)
  local t = {}
  for i = 1, #flat, 2 do
    t[flat[i]] = flat[i + 1]
  end
  return {status, cjson.encode(t)}
end

local function move(key, to, now)
  local history = cjson.decode(redis.call('HGET', key, 'history'))
  history[#history + 1] = {state = to, at = now}
  redis.call('HSET', key, 'state', to, 'history', cjson.encode(history))
  redis.call('HINCRBY', key, 'version', 1)
end

-- A session still before payment and past its deadline expires now, whoever meets it.
local function expire_if_due(key, now)
  local state = redis.call('HGET', key, 'state')
  local live = state == 'CREATED' or state == 'LOCKED' or state == 'PAYMENT_PENDING'
  if live and now >= tonumber(redis.call('HGET', key, 'deadline')) then
    move(key, 'EXPIRED', now)
    return true
  end
  return false
end

