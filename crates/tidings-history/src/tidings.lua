#!lua name=tidings
--
-- Tidings channel history: one atomic publish step, positions and replay.
-- See crates/tidings-history/README.md. Requires Redis 7.0 or later.
--
-- Keys of channel C, both in C's own Redis Cluster slot (so that FCALL, routed
-- by the key C, runs on the node that holds them):
--   <prefix>{C}:stream  a Redis Stream, entry id "<offset>-0", field "d" = payload,
--                       trimmed to exactly <size> entries, expires <ttl> s after
--                       the last publish
--   <prefix>{C}:meta    a hash: "epoch" and "offset" (the last offset assigned),
--                       expires <meta_ttl> s after the last publish or read
-- A channel with a hash tag of its own ("a{t}b": slot of "t") uses
-- <prefix>{t}a{t}b:stream and <prefix>{t}a{t}b:meta instead.
--
-- FCALL tidings_publish  1 <channel> <payload> <size> <ttl_secs> [<meta_ttl_secs> [sharded]]
--   -> [offset, epoch]; also PUBLISHes "\0th1 <offset> <epoch>\n<payload>" on <channel>
--      (SPUBLISH when the last argument is the word "sharded")
-- FCALL tidings_position 1 <channel> [<meta_ttl_secs>]
--   -> [offset, epoch]
-- FCALL tidings_recover  1 <channel> <since_offset> <since_epoch> <limit> [<meta_ttl_secs>]
--   -> [offset, epoch, status, entries]   status: "recovered" | "unrecoverable" | "future"
--                                         entries: XRANGE reply (only when "recovered")

local PREFIX = '__TIDINGS_PREFIX__'
local LIVE = '\0th1 '
local DEFAULT_META_TTL = 86400
local MAX_INT = 9007199254740991 -- 2^53 - 1: exact in Lua numbers and JavaScript

local function fail(message)
  error({err = 'ERR tidings: ' .. message})
end

local function uint(value, name, min)
  if type(value) ~= 'string' or not string.match(value, '^%d+$') or #value > 16 then
    fail(name .. ' must be a decimal integer')
  end
  local n = tonumber(value)
  if n > MAX_INT then
    fail(name .. ' must be at most ' .. string.format('%d', MAX_INT))
  end
  if n < min then
    fail(name .. ' must be at least ' .. min)
  end
  return n
end

local function one_key(keys, usage)
  if #keys ~= 1 then
    fail('expected exactly one key, the channel: ' .. usage)
  end
  local channel = keys[1]
  local base = PREFIX .. '{' .. channel .. '}'
  local open = string.find(channel, '{', 1, true)
  if open then
    local close = string.find(channel, '}', open + 1, true)
    if close and close > open + 1 then
      -- the channel's slot is its hash tag's: so are its keys'
      base = PREFIX .. '{' .. string.sub(channel, open + 1, close - 1) .. '}' .. channel
    end
  end
  return channel, base .. ':stream', base .. ':meta'
end

local function meta_ttl_of(value, at_least)
  if value == nil then
    return math.max(at_least, DEFAULT_META_TTL)
  end
  local n = uint(value, 'meta_ttl', 1)
  if n < at_least then
    fail('meta_ttl must be at least ttl')
  end
  return n
end

-- The channel's epoch and last offset. A channel whose meta is missing (never
-- used, expired, or lost with a restart without persistence) starts a new
-- epoch at offset 0, and a stream left from an earlier epoch is dropped (its
-- offsets would be reused).
local function meta(stream, meta_key)
  local m = redis.call('HMGET', meta_key, 'epoch', 'offset')
  if m[1] then
    return m[1], tonumber(m[2]) or 0, false
  end
  local t = redis.call('TIME')
  local epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
  redis.call('DEL', stream)
  redis.call('HSET', meta_key, 'epoch', epoch, 'offset', 0)
  return epoch, 0, true
end

-- Reads keep the meta at least meta_ttl longer (GT: never shorten it).
local function touch(meta_key, meta_ttl, created)
  if created then
    redis.call('EXPIRE', meta_key, meta_ttl)
  else
    redis.call('EXPIRE', meta_key, meta_ttl, 'GT')
  end
end

local PUBLISH_USAGE =
  'FCALL tidings_publish 1 <channel> <payload> <size> <ttl_secs> [<meta_ttl_secs> [sharded]]'

local function publish(keys, args)
  local channel, stream, meta_key = one_key(keys, PUBLISH_USAGE)
  if #args < 3 or #args > 5 then
    fail('wrong number of arguments: ' .. PUBLISH_USAGE)
  end
  local sharded = false
  if #args == 5 then
    if args[5] ~= 'sharded' then
      fail('the last argument must be the word sharded: ' .. PUBLISH_USAGE)
    end
    sharded = true
  end
  local payload = args[1]
  local size = uint(args[2], 'size', 1)
  local ttl = uint(args[3], 'ttl', 1)
  local meta_ttl = meta_ttl_of(args[4], ttl)
  local epoch = meta(stream, meta_key)
  local offset = redis.call('HINCRBY', meta_key, 'offset', 1)
  local id = string.format('%d', offset)
  redis.call('XADD', stream, 'MAXLEN', '=', size, id .. '-0', 'd', payload)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta_key, meta_ttl)
  redis.call(sharded and 'SPUBLISH' or 'PUBLISH', channel, LIVE .. id .. ' ' .. epoch .. '\n' .. payload)
  return {offset, epoch}
end

local POSITION_USAGE = 'FCALL tidings_position 1 <channel> [<meta_ttl_secs>]'

local function position(keys, args)
  local _, stream, meta_key = one_key(keys, POSITION_USAGE)
  if #args > 1 then
    fail('wrong number of arguments: ' .. POSITION_USAGE)
  end
  local meta_ttl = meta_ttl_of(args[1], 1)
  local epoch, offset, created = meta(stream, meta_key)
  touch(meta_key, meta_ttl, created)
  return {offset, epoch}
end

local RECOVER_USAGE =
  'FCALL tidings_recover 1 <channel> <since_offset> <since_epoch> <limit> [<meta_ttl_secs>]'

local function recover(keys, args)
  local _, stream, meta_key = one_key(keys, RECOVER_USAGE)
  if #args < 3 or #args > 4 then
    fail('wrong number of arguments: ' .. RECOVER_USAGE)
  end
  local since = uint(args[1], 'since_offset', 0)
  local since_epoch = args[2]
  local limit = uint(args[3], 'limit', 0)
  local meta_ttl = meta_ttl_of(args[4], 1)
  local epoch, offset, created = meta(stream, meta_key)
  touch(meta_key, meta_ttl, created)
  if since_epoch ~= epoch then
    return {offset, epoch, 'unrecoverable', {}}
  end
  if since > offset then
    return {offset, epoch, 'future', {}}
  end
  local missed = offset - since
  if missed == 0 then
    return {offset, epoch, 'recovered', {}}
  end
  if missed > limit then
    return {offset, epoch, 'unrecoverable', {}}
  end
  local entries = redis.call('XRANGE', stream,
    string.format('%d-0', since + 1), string.format('%d-0', offset))
  if #entries ~= missed then
    -- trimmed or expired: some of the missed entries are gone
    return {offset, epoch, 'unrecoverable', {}}
  end
  return {offset, epoch, 'recovered', entries}
end

redis.register_function('tidings_publish', publish)
redis.register_function('tidings_position', position)
redis.register_function('tidings_recover', recover)
