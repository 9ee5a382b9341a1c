-- Tidings presence: one presence set (a channel's, or a user's connections)
-- in three keys sharing one hash tag, changed atomically by this script.
--
--   KEYS[1] <prefix>{<set>}:c  hash   connection id -> "<user>\n<entry JSON>"
--   KEYS[2] <prefix>{<set>}:e  zset   connection id -> expiry (ms, server clock)
--   KEYS[3] <prefix>{<set>}:u  hash   user id -> number of live connections
--
-- ARGV[1] is the operation, ARGV[2] the entries' time to live in ms, ARGV[3]
-- the channel to publish the set's join and leave events on ("" for none):
--   add     ARGV[4..]: connection id, value, join event triples. Adds or
--           refreshes them. Returns {joined connection ids, left users}.
--   remove  ARGV[4..]: connection ids. Returns {{}, left users}.
--   list    Returns {{}, left users, connection id, value, ...}.
--   stats   Returns {{}, left users, connections, users}.
--
-- One call may also add to many sets at once (their keys need not share a
-- slot: for a server that is not a Cluster), three KEYS per set, in order:
--   add_sets  ARGV[3] must be "" (no events); ARGV[4..]: per set, the number
--             of its entries, then their connection id, value, "" triples.
--             Returns, per set, {joined connection ids, left users}.
--
-- With an events channel, the events of the change are PUBLISHed by the
-- script itself, atomically with it: a join's event is the one its caller
-- passed; a leave's is {"__tidings_presence":"leave","user":<user>}. A
-- gateway that dies right after its call loses none of them.
--
-- Every operation first drops up to 1,000 expired entries (a gateway that
-- died without saying goodbye stops refreshing its entries); the users that
-- left through that are reported like any other. The anonymous user is "":
-- its connections count, it is never a user. Time is the server's (TIME),
-- so gateways' clocks do not matter.

-- The set being changed (one per call, or each in turn for add_sets).
local conns, exp, users = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local ttl = tonumber(ARGV[2])
local events = ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local joined, left, join_events = {}, {}, {}

local function user_of(value)
  local nl = string.find(value, '\n', 1, true)
  if nl then return string.sub(value, 1, nl - 1) end
  return ''
end

local function drop(conn)
  local value = redis.call('HGET', conns, conn)
  redis.call('ZREM', exp, conn)
  if not value then return end
  redis.call('HDEL', conns, conn)
  local user = user_of(value)
  if user ~= '' then
    if redis.call('HINCRBY', users, user, -1) <= 0 then
      redis.call('HDEL', users, user)
      left[#left + 1] = user
    end
  end
end

local function drop_expired()
  for _, conn in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now, 'LIMIT', 0, 1000)) do
    drop(conn)
  end
end

local function publish()
  if events == '' then return end
  for _, event in ipairs(join_events) do
    if event ~= '' then redis.call('PUBLISH', events, event) end
  end
  for _, user in ipairs(left) do
    redis.call('PUBLISH', events, '{"__tidings_presence":"leave","user":' .. cjson.encode(user) .. '}')
  end
end

-- Adds the triples ARGV[from..to] to the current set.
local function add(from, to)
  for i = from, to, 3 do
    local conn, value = ARGV[i], ARGV[i + 1]
    if redis.call('HSET', conns, conn, value) == 1 then
      local user = user_of(value)
      if user ~= '' and redis.call('HINCRBY', users, user, 1) == 1 then
        joined[#joined + 1] = conn
        join_events[#join_events + 1] = ARGV[i + 2]
      end
    end
    redis.call('ZADD', exp, now + ttl, conn)
  end
  -- The keys live as long as their longest-lived entry.
  local last = redis.call('ZRANGE', exp, -1, -1, 'WITHSCORES')
  if last[2] then
    local at = tonumber(last[2])
    redis.call('PEXPIREAT', conns, at)
    redis.call('PEXPIREAT', exp, at)
    if redis.call('EXISTS', users) == 1 then redis.call('PEXPIREAT', users, at) end
  end
end

if op == 'add_sets' then
  if events ~= '' or #KEYS % 3 ~= 0 then
    return redis.error_reply('ERR tidings presence: add_sets takes three keys per set and no events')
  end
  -- The counts are checked before anything changes.
  local i = 4
  for _ = 1, #KEYS, 3 do
    local n = tonumber(ARGV[i])
    if not n or n < 0 or i + 3 * n > #ARGV then
      return redis.error_reply('ERR tidings presence: add_sets: bad entry count')
    end
    i = i + 1 + 3 * n
  end
  if i ~= #ARGV + 1 then
    return redis.error_reply('ERR tidings presence: add_sets: arguments left over')
  end
  local replies = {}
  i = 4
  for k = 1, #KEYS, 3 do
    conns, exp, users = KEYS[k], KEYS[k + 1], KEYS[k + 2]
    joined, left, join_events = {}, {}, {}
    local n = tonumber(ARGV[i])
    drop_expired()
    add(i + 1, i + 3 * n)
    i = i + 1 + 3 * n
    replies[#replies + 1] = {joined, left}
  end
  return replies
end

drop_expired()
if op == 'add' then
  add(4, #ARGV)
  publish()
  return {joined, left}
elseif op == 'remove' then
  for i = 4, #ARGV do drop(ARGV[i]) end
  publish()
  return {joined, left}
elseif op == 'list' then
  publish()
  local reply = {joined, left}
  local all = redis.call('HGETALL', conns)
  for i = 1, #all do reply[#reply + 1] = all[i] end
  return reply
elseif op == 'stats' then
  publish()
  return {joined, left, redis.call('ZCOUNT', exp, now + 1, '+inf'), redis.call('HLEN', users)}
end
return redis.error_reply('ERR tidings presence: unknown operation')
