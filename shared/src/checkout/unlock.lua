-- Release (or extend) a cart's checkout lock, only if this session holds it.
--
-- KEYS: lock
-- ARGV: session id; '' to release, or how long the lock is to last: a time to live (ms),
--       or with ARGV[3] 'take-at' an instant (epoch ms, Redis clock); and optionally
--       ARGV[3] 'take' or 'take-at': extending also takes the lock when nobody holds it (a
--       lock lost while its session lives), never from another session
-- Replies: {'OK'} | {'NOT_HOLDER', the holder ('' for none)}
local holder = redis.call('GET', KEYS[1])
local take = ARGV[3] == 'take' or ARGV[3] == 'take-at'
local until_arg = ARGV[3] == 'take-at' and 'PXAT' or 'PX'
if holder ~= ARGV[1] then
  if holder or ARGV[2] == '' or not take then
    return {'NOT_HOLDER', holder or ''}
  end
  redis.call('SET', KEYS[1], ARGV[1], until_arg, tonumber(ARGV[2]))
  return {'OK'}
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
elseif until_arg == 'PXAT' then
  redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[2]))
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return {'OK'}
