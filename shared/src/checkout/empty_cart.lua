-- After the order: empty the checked-out cart and release its lock. Only the cart the
-- session checked out is emptied: one whose version moved on since (emptied already, filled
-- again) is left as it is, so a replayed webhook changes nothing, however late; and so is
-- a cart built again under the key after a Redis loss (another `created`). The cart stays,
-- with no lines and its version moved on (a writer holding a version from before the order
-- is refused). A lock another session holds now (one a lost lock let in, which froze this
-- same cart, and whose order will be refused) is left to it, the cart emptied all the same.
--
-- KEYS: cart, lock
-- ARGV: session id, the cart's version when the session locked it, its generation
--       (`created`: which life of the key) and when that version was written (`written`:
--       a version number a rolled-back Redis gave again to other lines is another cart);
--       each '' when not known; the cart's time to live, ms (emptying is a change: it
--       slides, as every change of the cart does)
-- Replies: {'OK'}
local holder = redis.call('GET', KEYS[2])
local lines = {}
local read = redis.call('HMGET', KEYS[1], 'version', 'created', 'written')
local same_version = (ARGV[2] == '' or read[1] == ARGV[2]) and ((ARGV[4] or '') == '' or read[3] == ARGV[4])
local same_life = (ARGV[3] or '') == '' or not read[2] or read[2] == ARGV[3]
if same_version and same_life then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    local kind = string.sub(field, 1, 2)
    if kind == 'q:' or kind == 'd:' or kind == 'o:' then
      lines[#lines + 1] = field
    end
  end
end
if #lines > 0 then
  call_each('HDEL', KEYS[1], lines)
  redis.call('HSET', KEYS[1], 'lines', 0, 'written', now_written())
  redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if holder == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return {'OK'}
