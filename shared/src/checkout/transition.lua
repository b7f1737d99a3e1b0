-- Compare-and-set a session's state: move to ARGV[1] only from one of the states in
-- ARGV[2] (the sources the Rust state machine allows), optionally setting fields and
-- moving the deadline.
--
-- KEYS: session, metadata, then any extra keys whose values come back with the reply
--       (each carries the session's hash tag)
-- ARGV: target state, source states joined by ',', new deadline in epoch ms of the Redis
--       clock ('' = keep the deadline), how long the record outlives its deadline (ms),
--       the states before payment joined by ',', the number g of guards, g field,
--       expected value pairs (the move is refused unless each field holds its value), then
--       field, value pairs to set with the move
-- Replies: {'OK' | 'SAME' (already there) | 'STATE' (refused: see its state)
--           | 'GUARD' (refused: a guard did not hold) | 'EXPIRED_NOW' (it expired
--           instead), extra values…, session fields…} | {'NOT_FOUND'}
local key = KEYS[1]
local read = read_session(key)
if not read then
  return {'NOT_FOUND'}
end
local now = now_ms()
if expire_if_due(key, read, function() return now end, ARGV[5]) then
  return session_snapshot(key, 'EXPIRED_NOW', 3)
end
if read.state == ARGV[1] then
  return session_snapshot(key, 'SAME', 3)
end
if not listed(ARGV[2], read.state) then
  return session_snapshot(key, 'STATE', 3)
end
local guards = tonumber(ARGV[6])
if guards > 0 then
  local fields = {}
  for i = 1, guards do
    fields[i] = ARGV[5 + 2 * i]
  end
  local held = redis.call('HMGET', key, unpack(fields))
  for i = 1, guards do
    if held[i] ~= ARGV[6 + 2 * i] then
      return session_snapshot(key, 'GUARD', 3)
    end
  end
end
local more = {}
for i = 7 + 2 * guards, #ARGV do
  more[#more + 1] = ARGV[i]
end
local deadline = ARGV[3] ~= '' and tonumber(ARGV[3])
if deadline then
  more[#more + 1] = 'deadline'
  more[#more + 1] = deadline
end
move(key, ARGV[1], now, read, more)
if deadline then
  local keep = tonumber(ARGV[4])
  redis.call('PEXPIREAT', key, deadline + keep)
  redis.call('PEXPIREAT', KEYS[2], deadline + keep)
end
return session_snapshot(key, 'OK', 3)
