//! Lua scripts: one round trip per write, and the comparisons that keep an
//! older write (a journal replay, a slow node) from replacing a newer one.
//!
//! An encoded entry starts with the magic `CHTE`, a version byte, a kind byte,
//! a flags byte, then `stored_at` as 8 big-endian bytes (Lua indices 8..15).
//! Comparing those bytes one by one compares the timestamps. Counters are
//! stored as plain integers (so `INCRBY` works) and carry no timestamp.

use redis::Script;

/// `KEYS[1]` entry key, `KEYS[2..]` tag sets; `ARGV[1]` value, `ARGV[2]` TTL
/// in ms (`0`: no expiry), `ARGV[3]` `nx` to store only if absent. Stores
/// unless the stored entry is newer (or present, with `nx`); indexes the key
/// in each tag set, whose TTL is extended to cover the entry. Returns 1 when
/// stored, 0 otherwise.
pub(crate) const SET: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[3] == 'nx' and cur then return 0 end
local new = ARGV[1]
if cur and string.len(cur) >= 15 and string.sub(cur, 1, 4) == 'CHTE'
   and string.len(new) >= 15 and string.sub(new, 1, 4) == 'CHTE' then
  for i = 8, 15 do
    local a, b = string.byte(cur, i), string.byte(new, i)
    if a > b then return 0 end
    if a < b then break end
  end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], new, 'PX', ttl)
else
  redis.call('SET', KEYS[1], new)
end
for i = 2, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  local left = redis.call('PTTL', KEYS[i])
  if ttl == 0 then
    redis.call('PERSIST', KEYS[i])
  elseif left == -1 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
";

/// `KEYS[1]` entry key; `ARGV[1]` the delete's time as 8 big-endian bytes of
/// Unix milliseconds. Removes the entry unless it was stored after the
/// delete. Returns the number of keys removed.
pub(crate) const DELETE_IF_NOT_NEWER: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.len(cur) >= 15 and string.sub(cur, 1, 4) == 'CHTE' then
  for i = 1, 8 do
    local a, b = string.byte(cur, i + 7), string.byte(ARGV[1], i)
    if a > b then return 0 end
    if a < b then break end
  end
end
return redis.call('UNLINK', KEYS[1])
";

/// `KEYS[1]` counter key; `ARGV[1]` delta. Nil when the key is missing, an
/// error reply `NOTCOUNTER` when it holds something else, else the new value
/// (`INCRBY` keeps the TTL).
pub(crate) const INCR: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
if not string.match(cur, '^%-?%d+$') then return redis.error_reply('NOTCOUNTER') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
";

#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) set: Script,
    pub(crate) delete_if_older: Script,
    pub(crate) incr: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            set: Script::new(SET),
            delete_if_older: Script::new(DELETE_IF_NOT_NEWER),
            incr: Script::new(INCR),
        }
    }
}
