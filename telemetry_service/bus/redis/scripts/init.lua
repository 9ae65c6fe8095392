local P = ARGV[1]
local epoch = redis.call('GET', P .. 'epoch')
if epoch and epoch ~= ARGV[3] then return epoch end
-- presence (online, hubs, hub:*, node:*) is about the hubs and connectors alive now, not
-- about the history: it stays, and after a flush it is gone anyway. The batch records are
-- per epoch and expire.
for _, k in ipairs({'seq', 'log', 'status', 'order'}) do
  redis.call('DEL', P .. k)
end
redis.call('SET', P .. 'epoch', ARGV[2])
return ARGV[2]
