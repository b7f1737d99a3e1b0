-- Finish an idempotent request: keep its answer for the retention time, forget the
-- attempt (a failure worth retrying) so the next try starts over with the same token, or
-- drop the record (a refused credential: nothing was done, and the key is the next
-- caller's, whatever its request).
--
-- KEYS: idempotency:{scope}:{key}
-- ARGV: token, 'keep' | 'forget' | 'drop', status, body, retention in ms, headers (one
--       "name: value" a line), the attempt's id
-- Keeping needs the record's token (the work it answers for); forgetting ends only the
-- lease of this very attempt, so one sent late (after a Redis that timed out came back)
-- never ends the lease of a retry that took over meanwhile.
-- Reply: {'OK'} | {'LOST'} (the record now belongs to another attempt)
local held = redis.call('HMGET', KEYS[1], 'token', 'attempt', 'state')
if ARGV[2] == 'keep' then
  if held[1] ~= ARGV[1] then
    return {'LOST'}
  end
  redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[3], 'body', ARGV[4], 'headers', ARGV[6] or '')
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5]))
  return {'OK'}
end
if held[2] ~= ARGV[7] or held[3] ~= 'pending' then
  return {'LOST'}
end
if ARGV[2] == 'drop' then
  redis.call('DEL', KEYS[1])
  return {'OK'}
end
redis.call('HSET', KEYS[1], 'lease', 0)
return {'OK'}
