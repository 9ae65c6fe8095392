local P = ARGV[1]
if redis.call('GET', P .. 'epoch') ~= ARGV[2] then
  return redis.error_reply('EPOCH the history in Redis is not the one this hub knows')
end
local maxlen = ARGV[3]
local seqkey, logkey = P .. 'seq', P .. 'log'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function publish(field, prefix)
  local seq = redis.call('INCR', seqkey)
  local payload = prefix .. seq .. '}'
  -- the epoch on every entry: a hub reading on after Redis lost its data (before it
  -- noticed) must not take the new history's entries for the old one's
  redis.call('XADD', logkey, 'MAXLEN', '~', maxlen, seq .. '-0', field, payload, 'e', ARGV[2])
  return seq, payload
end

local function presence(node, node_json, online, ts_json)
  publish('NODE_PRESENCE\0' .. node,
    '{"type":"NODE_PRESENCE","nodeId":' .. node_json .. ',"online":' .. online ..
    ',"timestamp":' .. ts_json .. ',"seq":')
end

local function join(hub, node, node_json, ts_json)
  redis.call('HSET', P .. 'hub:' .. hub, node, node_json)
  local key = P .. 'node:' .. node
  if redis.call('SADD', key, hub) == 1 and redis.call('SCARD', key) == 1 then
    redis.call('SADD', P .. 'online', node)
    presence(node, node_json, 'true', ts_json)
  end
end

local function leave(hub, node, node_json, ts_json)
  redis.call('HDEL', P .. 'hub:' .. hub, node)
  local key = P .. 'node:' .. node
  if redis.call('SREM', key, hub) == 1 and redis.call('SCARD', key) == 0 then
    redis.call('SREM', P .. 'online', node)
    presence(node, node_json, 'false', ts_json)
  end
end

local function forget_hub(hub, ts_json)
  local nodes = redis.call('HGETALL', P .. 'hub:' .. hub)
  for i = 1, #nodes, 2 do
    leave(hub, nodes[i], nodes[i + 1], ts_json)
  end
  redis.call('DEL', P .. 'hub:' .. hub)
  redis.call('ZREM', P .. 'hubs', hub)
  -- its last applied batch stays (see SUBMIT): a hub taken for dead may be alive and come
  -- back with batches it does not know were applied
end
