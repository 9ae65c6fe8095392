forget_hub(ARGV[4], ARGV[6])
redis.call('DEL', P .. 'batch:' .. ARGV[2] .. ':' .. ARGV[4])
return 1
