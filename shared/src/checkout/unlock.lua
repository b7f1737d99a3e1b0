-- Release (or extend) a cart's checkout lock, only if this session holds it.
--
-- KEYS: lock
-- ARGV: session id, '' to release or a new time to live (ms) to extend
-- Replies: {'OK'} | {'NOT_HOLDER'}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'NOT_HOLDER'}
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return {'OK'}
