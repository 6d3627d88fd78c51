/**
 * The Lua side of RedisCommandStore. Per device (one hash tag, one slot) the scripts take six keys:
 *
 *   KEYS[1] data         HASH  b:<id> body JSON · s:<id> state · u:<id> updatedAt · r:<id> response JSON
 *                              · k:<id> idempotency key · seq (the device's creation counter)
 *   KEYS[2] order        ZSET  id by seq: every record, creation order
 *   KEYS[3] open         ZSET  id by seq: queued, sent, delivered
 *   KEYS[4] undelivered  SET   ids in queued or sent (the maxUndelivered bound)
 *   KEYS[5] done         ZSET  id by seq: finished records (trimmed to historyMax, oldest first)
 *   KEYS[6] idem         HASH  idempotency key → id
 *
 * The state is a plain field, so a transition never decodes JSON in Lua (cjson would round numbers
 * in `params` to 14 digits). Records come back as four strings: body, state, updatedAt, response
 * ('' when none).
 */
import { OPEN_STATES, UNDELIVERED_STATES } from '../../core/commands.js';
import type { ScriptDefinition } from './scripts.js';

const luaSet = (states: readonly string[]) => `{${states.map((s) => `[${JSON.stringify(s)}]=true`).join(', ')}}`;

const PRELUDE = `
local OPEN = ${luaSet(OPEN_STATES)}
local UNDELIVERED = ${luaSet(UNDELIVERED_STATES)}
local function fields(id)
  local f = redis.call('HMGET', KEYS[1], 'b:' .. id, 's:' .. id, 'u:' .. id, 'r:' .. id)
  return {f[1], f[2], f[3], f[4] or ''}
end
-- Drops the oldest finished records (creation order) beyond max, with their idempotency keys.
local function trim(max)
  local over = redis.call('ZCARD', KEYS[5]) - max
  if over <= 0 then return end
  local ids = redis.call('ZRANGE', KEYS[5], 0, over - 1)
  for _, id in ipairs(ids) do
    local key = redis.call('HGET', KEYS[1], 'k:' .. id)
    if key and redis.call('HGET', KEYS[6], key) == id then redis.call('HDEL', KEYS[6], key) end
    redis.call('HDEL', KEYS[1], 'b:' .. id, 's:' .. id, 'u:' .. id, 'r:' .. id, 'k:' .. id)
    redis.call('ZREM', KEYS[2], id)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, over - 1)
end
`;

/**
 * ARGV: id, body, state, updatedAt, response|'', hasKey '1'|'0', key, maxUndelivered, historyMax.
 * Returns {'existing', b, s, u, r} | {'full', n} | {'created'}.
 */
const CREATE = `${PRELUDE}
local id, state = ARGV[1], ARGV[3]
local hasKey, key = ARGV[6] == '1', ARGV[7]
if hasKey then
  local existing = redis.call('HGET', KEYS[6], key)
  if existing and redis.call('HEXISTS', KEYS[1], 'b:' .. existing) == 1 then
    local f = fields(existing)
    return {'existing', f[1], f[2], f[3], f[4]}
  end
end
local n = redis.call('SCARD', KEYS[4])
if n >= tonumber(ARGV[8]) then return {'full', tostring(n)} end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'b:' .. id, ARGV[2], 's:' .. id, state, 'u:' .. id, ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'r:' .. id, ARGV[5]) end
if hasKey then
  redis.call('HSET', KEYS[1], 'k:' .. id, key)
  redis.call('HSET', KEYS[6], key, id)
end
redis.call('ZADD', KEYS[2], seq, id)
if UNDELIVERED[state] then redis.call('SADD', KEYS[4], id) end
if OPEN[state] then
  redis.call('ZADD', KEYS[3], seq, id)
else
  redis.call('ZADD', KEYS[5], seq, id)
  trim(tonumber(ARGV[9]))
end
return {'created'}
`;

/**
 * ARGV: id, state, updatedAt, response|'', historyMax, from states...
 * Returns 0 (unknown id or another state) or {b, s, u, r} after the change.
 */
const TRANSITION = `${PRELUDE}
local id, nxt = ARGV[1], ARGV[2]
local cur = redis.call('HGET', KEYS[1], 's:' .. id)
if not cur then return 0 end
local allowed = false
for i = 6, #ARGV do
  if ARGV[i] == cur then allowed = true break end
end
if not allowed then return 0 end
redis.call('HSET', KEYS[1], 's:' .. id, nxt, 'u:' .. id, ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'r:' .. id, ARGV[4]) end
-- Read before trim: with historyMax 0 the record itself may go, and the caller still gets it.
local out = fields(id)
if UNDELIVERED[cur] and not UNDELIVERED[nxt] then
  redis.call('SREM', KEYS[4], id)
elseif UNDELIVERED[nxt] and not UNDELIVERED[cur] then
  redis.call('SADD', KEYS[4], id)
end
if OPEN[cur] and not OPEN[nxt] then
  local seq = redis.call('ZSCORE', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[5], seq, id)
  trim(tonumber(ARGV[5]))
elseif OPEN[nxt] and not OPEN[cur] then
  local seq = redis.call('ZSCORE', KEYS[2], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('ZADD', KEYS[3], seq, id)
end
return out
`;

/**
 * ARGV: after seq, limit, filter '1'|'0', states...
 * Returns {more '1'|'0', last seq, b, s, u, r, b, s, u, r, ...}: one consistent snapshot.
 */
const LIST = `${PRELUDE}
local limit = tonumber(ARGV[2])
local filter = nil
if ARGV[3] == '1' then
  filter = {}
  for i = 4, #ARGV do filter[ARGV[i]] = true end
end
local out = {'0', ARGV[1]}
local count = 0
local start = '(' .. ARGV[1]
while true do
  local page = redis.call('ZRANGEBYSCORE', KEYS[2], start, '+inf', 'WITHSCORES', 'LIMIT', 0, 256)
  for i = 1, #page, 2 do
    local id, seq = page[i], page[i + 1]
    local state = redis.call('HGET', KEYS[1], 's:' .. id)
    if state and (filter == nil or filter[state]) then
      if count == limit then
        out[1] = '1'
        return out
      end
      local f = fields(id)
      out[#out + 1] = f[1]
      out[#out + 1] = f[2]
      out[#out + 1] = f[3]
      out[#out + 1] = f[4]
      out[2] = seq
      count = count + 1
    end
    start = '(' .. seq
  end
  if #page < 512 then return out end
end
`;

/** Returns {b, s, u, r, ...} of the open records in creation order. */
const OPEN_SCRIPT = `${PRELUDE}
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local f = fields(id)
  if f[1] then
    for j = 1, 4 do out[#out + 1] = f[j] end
  end
end
return out
`;

export const COMMAND_SCRIPTS: Readonly<Record<string, ScriptDefinition>> = {
  iotgateCommandCreate: { numberOfKeys: 6, lua: CREATE },
  iotgateCommandTransition: { numberOfKeys: 6, lua: TRANSITION },
  iotgateCommandList: { numberOfKeys: 6, lua: LIST },
  iotgateCommandOpen: { numberOfKeys: 6, lua: OPEN_SCRIPT },
};
