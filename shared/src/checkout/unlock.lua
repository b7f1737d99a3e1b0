-- Release, keep or take back a cart's checkout lock, only for the session that holds it.
--
-- KEYS: lock, and optionally the cart (with ARGV[4] to ARGV[6])
-- ARGV: session id; '' to release, or the instant (epoch ms, Redis clock) until which the
--       lock is to last; and optionally 'take': keeping it also takes the lock when nobody
--       holds it (a lock lost while its session lives), never from another session; then
--       optionally the cart's version when the session locked it ('' not to check): a free
--       lock is taken only if the cart is still at it (a cart changed or ordered since is
--       not the one the session froze); the cart's generation (its `created`, '' not to
--       check): a cart that is another life of its key (built again after a Redis loss) is
--       not the session's, nor is its lock; and when that version was written (`written`,
--       '' not to check): a version number a rolled-back Redis gave again to other lines is
--       not the cart the session froze
-- Replies: {'OK'} | {'NOT_HOLDER', the holder ('' for none)} | {'MOVED', the cart's version}
--        | {'OTHER_CART'}
if KEYS[2] and ARGV[3] == 'take' and (ARGV[5] or '') ~= '' then
  local created = redis.call('HGET', KEYS[2], 'created')
  if created and created ~= ARGV[5] then
    return {'OTHER_CART'}
  end
end
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] then
  if holder or ARGV[2] == '' or ARGV[3] ~= 'take' then
    return {'NOT_HOLDER', holder or ''}
  end
  local version, written = ARGV[4] or '', ARGV[6] or ''
  if KEYS[2] and (version ~= '' or written ~= '') then
    local now = redis.call('HMGET', KEYS[2], 'version', 'written')
    if now[1] and ((version ~= '' and now[1] ~= version) or (written ~= '' and now[2] ~= written)) then
      return {'MOVED', now[1]}
    end
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PXAT', tonumber(ARGV[2]))
  return {'OK'}
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[2]))
end
return {'OK'}
