-- Begin an idempotent request.
--
-- KEYS: idempotency:{scope}:{key}
-- ARGV: request fingerprint, fresh resume token, lease in ms (how long an unfinished
--       request keeps others waiting before one may take over)
--
-- The record is a hash: fingerprint, state ('pending' | 'done'), resume token (stable
-- across retries, so a retry continues the same work), lease deadline, and once done the
-- status and body of the answer.
-- Replies: {'NEW', token} | {'RESUME', token} (a lease ran out: continue that work)
--        | {'IN_FLIGHT', ms left of the lease} | {'MISMATCH'} | {'DONE', status, body, headers}
local now = now_ms()
local lease = tonumber(ARGV[3])
local record = redis.call('HMGET', KEYS[1], 'fingerprint', 'state', 'token', 'lease', 'status', 'body', 'headers')
if not record[1] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'pending', 'token', ARGV[2], 'lease', now + lease)
  redis.call('PEXPIRE', KEYS[1], lease * 10)
  return {'NEW', ARGV[2]}
end
if record[1] ~= ARGV[1] then
  return {'MISMATCH'}
end
if record[2] == 'done' then
  return {'DONE', tonumber(record[5]), record[6], record[7] or ''}
end
if tonumber(record[4]) > now then
  return {'IN_FLIGHT', tonumber(record[4]) - now}
end
redis.call('HSET', KEYS[1], 'lease', now + lease)
redis.call('PEXPIRE', KEYS[1], lease * 10)
return {'RESUME', record[3]}
