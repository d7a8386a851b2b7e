-- Removes the consumers of group ARGV[1] on stream KEYS[1] that hold no
-- pending entries and have been idle for at least ARGV[2] milliseconds,
-- except ARGV[3..] (the caller's own consumers); returns their names.
--
-- A script runs atomically: no consumer can read (and so own) an entry
-- between the pending check and XGROUP DELCONSUMER, which would otherwise
-- drop that entry from the group's pending list for good. A consumer that
-- still holds entries stays until XAUTOCLAIM has taken them over.
local keep = {}
for i = 3, #ARGV do
  keep[ARGV[i]] = true
end
local removed = {}
local consumers = redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if not keep[info['name']]
    and tonumber(info['pending']) == 0
    and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(removed, info['name'])
  end
end
return removed
