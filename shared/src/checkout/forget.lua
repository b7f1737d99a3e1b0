-- Forget a session's record if Redis still has it in the given state (one Redis remembers
-- from before its order: PostgreSQL's copy then takes its place, see `restore.lua`). A
-- record another call has moved on meanwhile, or put back already, stays.
--
-- KEYS: session
-- ARGV: the state it was read in
-- Replies: 1 forgotten, 0 left as it is
if redis.call('HGET', KEYS[1], 'state') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
