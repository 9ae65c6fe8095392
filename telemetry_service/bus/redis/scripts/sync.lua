local hub, ttl, ts_json = ARGV[4], tonumber(ARGV[5]), ARGV[6]
redis.call('ZADD', P .. 'hubs', now + ttl, hub)
local want = {}
for i = 7, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local have = redis.call('HGETALL', P .. 'hub:' .. hub)
local had = {}
for i = 1, #have, 2 do
  had[have[i]] = true
  if want[have[i]] == nil then leave(hub, have[i], have[i + 1], ts_json) end
end
for i = 7, #ARGV, 2 do
  if not had[ARGV[i]] then join(hub, ARGV[i], ARGV[i + 1], ts_json) end
end
return 1
