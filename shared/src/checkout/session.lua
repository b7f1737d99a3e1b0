-- Shared head of the checkout session scripts.
--
-- A session is one hash: id, cart, state, version (bumped by every transition: the fence
-- the order write carries), deadline (ms, Redis clock), total, currency, created,
-- history (JSON [{state, at}]), and later intent, order, refund.
--
-- Every session script answers flat, so both adapters read it alike and nothing is
-- encoded twice: {status, the value of each extra key asked for (false: none), then the
-- hash's field, value pairs as HGETALL gives them}.

-- The reply: `status`, the values of KEYS[first_extra..] (one MGET), then the hash.
local function session_snapshot(key, status, first_extra)
  local reply = {status}
  if first_extra and first_extra <= #KEYS then
    local extras = redis.call('MGET', unpack(KEYS, first_extra))
    for i = 1, #KEYS - first_extra + 1 do
      reply[#reply + 1] = extras[i]
    end
  end
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat do
    reply[#reply + 1] = flat[i]
  end
  return reply
end

-- `history` (the stored JSON array) with {state = to, at = now} appended: text appended
-- to text, the array is never decoded.
local function appended(history, to, now)
  local entry = '{"state":"' .. to .. '","at":' .. string.format('%d', now) .. '}'
  if not history or history == '[]' or history == '{}' then
    return '[' .. entry .. ']'
  end
  return string.sub(history, 1, -2) .. ',' .. entry .. ']'
end

-- Whether `state` ends a session without an order (`State::is_ended_without_order`):
-- what it held is then released.
local function ended_without_order(state)
  return state == 'CANCELLED' or state == 'EXPIRED' or state == 'FAILED'
end

-- Moves the session to `to`: state, history and version in one write, with `more`
-- (field, value, …) beside them. `read` holds its stored history and version. A move
-- that ends the session marks it `releasing` until its request has freed what it held
-- (`Checkouts::release` clears it): one cut short before that is released by the next
-- read that meets it, from the holds on once PostgreSQL's part is done (`releasing` is
-- then 'postgres', by `released_in_postgres.lua`).
local function move(key, to, now, read, more)
  local fields = {'state', to, 'history', appended(read.history, to, now),
    'version', (tonumber(read.version) or 0) + 1}
  if ended_without_order(to) then
    fields[#fields + 1] = 'releasing'
    fields[#fields + 1] = '1'
  end
  for i = 1, #more do
    fields[#fields + 1] = more[i]
  end
  redis.call('HSET', key, unpack(fields))
end

-- What the scripts read of a session before they decide, in one HMGET; nil when there
-- is no session (every session has a state).
local function read_session(key)
  local v = redis.call('HMGET', key, 'state', 'deadline', 'history', 'version')
  if not v[1] then
    return nil
  end
  return {state = v[1], deadline = tonumber(v[2]), history = v[3], version = v[4]}
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
-- `now` is a function, so the clock is read only for a session that could expire.
local function expire_if_due(key, read, now, before_payment)
  if listed(before_payment, read.state) and now() >= read.deadline then
    move(key, 'EXPIRED', now(), read, {})
    return true
  end
  return false
end
