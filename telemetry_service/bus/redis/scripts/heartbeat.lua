local hub, ttl, ts_json = ARGV[4], tonumber(ARGV[5]), ARGV[6]
-- When no hub's heartbeat reached Redis for longer than a hub may be silent, Redis itself
-- (or every way to it) had stopped: the hubs are not dead, they could not say so. They get
-- their time again rather than their nodes taken offline.
local last = tonumber(redis.call('GET', P .. 'beat') or '0')
redis.call('SET', P .. 'beat', now)
if last > 0 and now - last > ttl then
  for _, other in ipairs(redis.call('ZRANGE', P .. 'hubs', 0, -1)) do
    redis.call('ZADD', P .. 'hubs', now + ttl, other)
  end
end
local known = redis.call('ZADD', P .. 'hubs', now + ttl, hub) == 0
local dead = redis.call('ZRANGEBYSCORE', P .. 'hubs', '-inf', now)
for _, other in ipairs(dead) do
  if other ~= hub then forget_hub(other, ts_json) end
end
if known then return 1 end
return 0
