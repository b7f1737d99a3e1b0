-- Shared head of the checkout session scripts.
--
-- A session is one hash: id, cart, state, version (bumped by every transition: the fence
-- the order write carries), deadline (ms, Redis clock), total, currency, created,
-- history (JSON [{state, at}]), and later intent, order, refund.

-- {status, JSON of the whole hash}
local function session_snapshot(key, status)
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

-- Whether `state` is one of `states`, names joined by ',' (as the Rust state machine
-- passes them).
local function listed(states, state)
  for name in string.gmatch(states, '[^,]+') do
    if name == state then
      return true
    end
  end
  return false
end

-- A session still before payment (in one of `before_payment`, the states the Rust state
-- machine names so, joined by ',') and past its deadline expires now, whoever meets it.
local function expire_if_due(key, now, before_payment)
  local state = redis.call('HGET', key, 'state')
  if listed(before_payment, state) and now >= tonumber(redis.call('HGET', key, 'deadline')) then
    move(key, 'EXPIRED', now)
    return true
  end
  return false
end

