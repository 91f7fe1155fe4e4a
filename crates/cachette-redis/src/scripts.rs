//! Lua scripts: one round trip per write, and the comparisons that keep an
//! older write (a journal replay, a slow node, a set that timed out and
//! arrives late) from replacing a newer value or undoing a delete.
//!
//! **One clock.** Every write and delete carries a *version*: the Unix
//! milliseconds at which it was issued, as the writing node estimates the
//! master's clock (its own clock plus the offset it measured from earlier
//! replies, which carry the master's `TIME`). The scripts clamp a version at
//! the master's present, so a node whose clock runs ahead cannot make its
//! writes win over later ones; the residual error is the offset estimate's
//! (a few milliseconds on a LAN). Entries are stored as `CHTV`, the version
//! as 8 big-endian bytes, then the entry's own encoding (`CHTE`...); values
//! written by earlier versions (plain `CHTE`) are read with their
//! `stored_at` as version. Counters are plain integers (so `INCRBY` works)
//! and carry no version.
//!
//! **Traces of invalidations.** A delete on the master leaves a tombstone
//! `{ns}d:{key}` holding its version; a prefix, pattern, tag purge or clear
//! raises the namespace's purge mark `{ns}p`. Both live for the *tombstone
//! window*. A write older than the key's tombstone or the purge mark is
//! refused; so is a write older than the window itself (its delete may have
//! left no trace any more), which only costs a miss.

use redis::Script;

/// The version of a stored value (Lua), 0 when it has none (a counter).
const VERSION_OF: &str = r"
local function version_of(v)
  if not v then return 0 end
  local head = string.sub(v, 1, 4)
  local from
  if head == 'CHTV' and string.len(v) >= 12 then from = 5
  elseif head == 'CHTE' and string.len(v) >= 15 then from = 8
  else return 0 end
  local n = 0
  for i = from, from + 7 do n = n * 256 + string.byte(v, i) end
  return n
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function pack(n)
  local out = {}
  for i = 8, 1, -1 do
    out[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end
";

/// `KEYS[1]` entry key, `KEYS[2]` its tombstone, `KEYS[3]` the namespace's
/// purge mark, `KEYS[4..]` tag sets; `ARGV[1]` value, `ARGV[2]` TTL in ms
/// (`0`: no expiry), `ARGV[3]` `nx` to store only if absent, `ARGV[4]` the
/// write's version, `ARGV[5]` the tombstone window in ms, `ARGV[6]` `v` to
/// store the value versioned (entries) or `` as is (counters). With
/// `ARGV[3]` = `cas` (a touch), stores only if the current value's version
/// is `ARGV[7]`, and keeps that version (-2 otherwise).
///
/// Stores unless the stored value, the key's tombstone or the purge mark is
/// newer, or the version is older than the window; a write refused for the
/// tombstone, the mark or the window still removes a value older than
/// itself (it is stale). Indexes the key in each tag set, whose TTL is
/// extended to cover the entry. Returns
/// `{status, master_now_ms}`: 1 stored, 0 not stored (`nx` and present),
/// -1 refused as older.
pub(crate) fn set_script() -> String {
    format!(
        "{VERSION_OF}{}",
        r"
local now = now_ms()
local version = math.min(tonumber(ARGV[4]), now)
local cur = redis.call('GET', KEYS[1])
if ARGV[3] == 'nx' and cur then return {0, now} end
if ARGV[3] == 'cas' then
  -- A touch: replace exactly the value that was read, keeping its version.
  if not cur or version_of(cur) ~= tonumber(ARGV[7]) then return {-2, now} end
  version = tonumber(ARGV[7])
elseif version < version_of(cur) then
  return {-1, now}
elseif version < now - tonumber(ARGV[5])
   or version < (tonumber(redis.call('GET', KEYS[2])) or 0)
   or version < (tonumber(redis.call('GET', KEYS[3])) or 0) then
  -- Too old to be stored safely (a delete or purge after it, or one that
  -- may have left no trace any more); but it is newer than the value held,
  -- which is therefore stale: remove it rather than keep it.
  if cur then redis.call('UNLINK', KEYS[1]) end
  return {-1, now}
end
local value = ARGV[1]
if ARGV[6] == 'v' then value = 'CHTV' .. pack(version) .. value end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], value, 'PX', ttl)
else
  redis.call('SET', KEYS[1], value)
end
for i = 4, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  local left = redis.call('PTTL', KEYS[i])
  if ttl == 0 then
    redis.call('PERSIST', KEYS[i])
  elseif left == -1 or (left >= 0 and left < ttl) then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return {1, now}
"
    )
}

/// `KEYS[1]` entry key, `KEYS[2]` its tombstone; `ARGV[1]` the delete's
/// version, `ARGV[2]` the tombstone window in ms. Removes the entry unless
/// it was stored after the delete, and leaves (or raises) the tombstone.
/// Returns `{removed, master_now_ms}`.
pub(crate) fn delete_script() -> String {
    format!(
        "{VERSION_OF}{}",
        r"
local now = now_ms()
local version = math.min(tonumber(ARGV[1]), now)
local window = tonumber(ARGV[2])
local removed = 0
if version >= version_of(redis.call('GET', KEYS[1])) then
  removed = redis.call('UNLINK', KEYS[1])
end
if version >= (tonumber(redis.call('GET', KEYS[2])) or 0) and version > now - window then
  redis.call('SET', KEYS[2], version, 'PX', window)
end
return {removed, now}
"
    )
}

/// `KEYS[1]` the namespace's purge mark; `ARGV[1]` the purge's version,
/// `ARGV[2]` the tombstone window in ms. Raises the mark (run before the
/// sweep: writes older than the purge are refused from then on, and the
/// sweep removes those already stored). Returns `{0, master_now_ms}`.
pub(crate) fn purge_mark_script() -> String {
    format!(
        "{VERSION_OF}{}",
        r"
local now = now_ms()
local version = math.min(tonumber(ARGV[1]), now)
if version >= (tonumber(redis.call('GET', KEYS[1])) or 0) then
  redis.call('SET', KEYS[1], version, 'PX', tonumber(ARGV[2]))
end
return {0, now}
"
    )
}

/// `KEYS` entry keys; `ARGV[1]` a version. Removes those whose value is
/// older (counters, which carry none, included): what a node of a fleet of
/// peers cannot prove current. Returns `{removed, master_now_ms}`.
pub(crate) fn forget_older_script() -> String {
    format!(
        "{VERSION_OF}{}",
        r"
local now = now_ms()
local before = tonumber(ARGV[1])
local removed = 0
for i = 1, #KEYS do
  local head = redis.call('GETRANGE', KEYS[i], 0, 14)
  if head ~= '' and version_of(head) < before then
    removed = removed + redis.call('UNLINK', KEYS[i])
  end
end
return {removed, now}
"
    )
}

/// `KEYS[1]` counter key; `ARGV[1]` delta. Nil when the key is missing, an
/// error reply `NOTCOUNTER` when it holds something else, else the new value
/// (`INCRBY` keeps the TTL).
pub(crate) const INCR: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then return false end
if not string.match(cur, '^%-?%d+$') then return redis.error_reply('NOTCOUNTER') end
return redis.call('INCRBY', KEYS[1], ARGV[1])
";

/// Removes the members `members` of the tag index `index` (Lua; `version`,
/// `window` and `ns` as in the purge scripts, `infix` the slot tag put in
/// tombstone names on a cluster, empty otherwise).
const PURGE_MEMBERS: &str = r"
local function purge_members(index, members, version, window, ns, infix)
  local entries = ns .. 'k:'
  local removed = 0
  for _, member in ipairs(members) do
    -- A value stored after the purge (a late replay of an old purge) stays,
    -- and stays indexed.
    if version >= version_of(redis.call('GET', member)) then
      removed = removed + redis.call('UNLINK', member)
      redis.call('SREM', index, member)
      if window > 0 and string.sub(member, 1, string.len(entries)) == entries then
        local tomb = ns .. 'd:' .. infix .. string.sub(member, string.len(entries) + 1)
        local old = tonumber(redis.call('GET', tomb)) or 0
        if version > old then
          redis.call('SET', tomb, version, 'PX', window)
        end
      end
    end
  end
  return removed
end
";

/// `KEYS[1]` a tag index, `KEYS[2..]` members read from it; `ARGV[1]` the
/// purge's version, `ARGV[2]` the tombstone window in ms (`0`: leave no
/// tombstones), `ARGV[3]` the namespace. Removes each member and takes it
/// out of the index, atomically, so that a member stored again meanwhile is
/// either removed with its index entry or kept with it; each removed member
/// leaves a tombstone, as a delete does. Returns the number removed.
pub(crate) fn purge_tag_chunk_script() -> String {
    format!(
        "{VERSION_OF}{PURGE_MEMBERS}{}",
        r"
local version = math.min(tonumber(ARGV[1]), now_ms())
local members = {}
for i = 2, #KEYS do members[#members + 1] = KEYS[i] end
return purge_members(KEYS[1], members, version, tonumber(ARGV[2]), ARGV[3], '')
"
    )
}

/// A purge in one slot of a cluster. `KEYS[1]` the slot's purge mark,
/// `KEYS[2]` (optional) the slot's index of the purged tag; `ARGV[1]` the
/// purge's version, `ARGV[2]` the tombstone window in ms, `ARGV[3]` the
/// namespace, `ARGV[4]` the slot's hash tag (`{T}`). Raises the mark, then
/// removes the tag's members of this slot as `purge_tag_chunk` does: one
/// atomic step per slot. Returns the number removed.
pub(crate) fn purge_slot_script() -> String {
    format!(
        "{VERSION_OF}{PURGE_MEMBERS}{}",
        r"
local version = math.min(tonumber(ARGV[1]), now_ms())
local window = tonumber(ARGV[2])
if version >= (tonumber(redis.call('GET', KEYS[1])) or 0) then
  redis.call('SET', KEYS[1], version, 'PX', window)
end
if not KEYS[2] then return 0 end
local members = redis.call('SMEMBERS', KEYS[2])
return purge_members(KEYS[2], members, version, window, ARGV[3], ARGV[4])
"
    )
}

/// `KEYS[1]` an index set; `ARGV[1]` a member, `ARGV[2]` the member's TTL
/// in ms (`0`: none). Adds the member and extends the set's TTL to cover
/// it (a cluster's variants index, which cannot be updated by the set
/// script of an entry in another slot: it is added to first, so an entry
/// is never stored unindexed).
pub(crate) const INDEX_ADD: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if ttl == 0 then
  redis.call('PERSIST', KEYS[1])
elseif left == -1 or (left >= 0 and left < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
";

#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) set: Script,
    pub(crate) delete: Script,
    pub(crate) purge_mark: Script,
    pub(crate) incr: Script,
    pub(crate) purge_tag_chunk: Script,
    pub(crate) purge_slot: Script,
    pub(crate) index_add: Script,
    pub(crate) forget_older: Script,
    /// The sources of the scripts a cluster pipelines (loaded on every
    /// primary first).
    pub(crate) set_code: String,
    pub(crate) delete_code: String,
    pub(crate) purge_slot_code: String,
}

impl Default for Scripts {
    fn default() -> Self {
        let (set_code, delete_code, purge_slot_code) =
            (set_script(), delete_script(), purge_slot_script());
        Self {
            set: Script::new(&set_code),
            delete: Script::new(&delete_code),
            purge_mark: Script::new(&purge_mark_script()),
            incr: Script::new(INCR),
            purge_tag_chunk: Script::new(&purge_tag_chunk_script()),
            purge_slot: Script::new(&purge_slot_code),
            index_add: Script::new(INDEX_ADD),
            forget_older: Script::new(&forget_older_script()),
            set_code,
            delete_code,
            purge_slot_code,
        }
    }
}
