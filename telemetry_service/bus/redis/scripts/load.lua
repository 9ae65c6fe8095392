local P = ARGV[1]
local seq = tonumber(redis.call('GET', P .. 'seq') or '0')
local statuses = {}
local statuskey = P .. 'status'
for _, node in ipairs(redis.call('ZRANGE', P .. 'order', 0, -1)) do
  local value = redis.call('HGET', statuskey, node)
  if value then
    statuses[#statuses + 1] = node
    statuses[#statuses + 1] = value
  end
end
return {seq, statuses, redis.call('SMEMBERS', P .. 'online')}
