-- Compare-and-set a session's state: move to ARGV[1] only from one of the states in
-- ARGV[2] (the sources the Rust state machine allows), optionally setting fields and
-- moving the deadline.
--
-- KEYS: session, metadata
-- ARGV: target state, source states joined by ',', new deadline in epoch ms of the Redis
--       clock ('' = keep the deadline), how long the record outlives its deadline (ms),
--       the states before payment joined by ',', then field, value pairs to set with the
--       move
-- Replies: {'OK' | 'SAME' (already there) | 'STATE' (refused: see its state)
--           | 'EXPIRED_NOW' (it expired instead), session JSON} | {'NOT_FOUND'}
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  return {'NOT_FOUND'}
end
local now = now_ms()
if expire_if_due(key, now, ARGV[5]) then
  return session_snapshot(key, 'EXPIRED_NOW')
end
local state = redis.call('HGET', key, 'state')
if state == ARGV[1] then
  return session_snapshot(key, 'SAME')
end
if not listed(ARGV[2], state) then
  return session_snapshot(key, 'STATE')
end
move(key, ARGV[1], now)
for i = 6, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
if ARGV[3] ~= '' then
  local deadline, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
  redis.call('HSET', key, 'deadline', deadline)
  redis.call('PEXPIREAT', key, deadline + keep)
  redis.call('PEXPIREAT', KEYS[2], deadline + keep)
end
return session_snapshot(key, 'OK')
