local hub, max_nodes = ARGV[4], tonumber(ARGV[6])
-- The last batch of this hub applied in this epoch, for as long as a hub can be away and
-- still come back with batches it does not know the fate of (a day). A batch sent again
-- after a broken connection, which the old connection's bytes (read late, by a Redis that
-- was frozen) had already applied, is applied once.
local batchkey = P .. 'batch:' .. ARGV[2] .. ':' .. hub
if tonumber(redis.call('GET', batchkey) or '0') >= tonumber(ARGV[5]) then
  return redis.call('GET', seqkey)
end
redis.call('SET', batchkey, ARGV[5], 'EX', 86400)
local statuskey, orderkey = P .. 'status', P .. 'order'
for i = 7, #ARGV, 4 do
  local kind = ARGV[i]
  if kind == 'm' then
    local seq, payload = publish(ARGV[i + 1], ARGV[i + 2])
    local node = ARGV[i + 3]
    if node ~= '' and (redis.call('HEXISTS', statuskey, node) == 1
                       or redis.call('HLEN', statuskey) < max_nodes) then
      redis.call('HSET', statuskey, node, seq .. ' ' .. payload)
      redis.call('ZADD', orderkey, 'NX', seq, node)
    end
  elseif kind == 'j' then
    join(hub, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  else
    leave(hub, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
return redis.call('GET', seqkey)
