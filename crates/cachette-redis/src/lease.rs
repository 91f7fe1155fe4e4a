//! Fill leases on the master (see `cachette_core::Tiered::fleet_fill`):
//! one key per lease, `{ns}l:{key}`, holding `<state>:<token>`, where the
//! state is `f` (filling), `F` (filled), `U` (not shared) or `a`
//! (abandoned). Each call is one single-key script, so it is atomic on one
//! master and on a cluster alike; the end of a lease is announced on the
//! bus (`l` messages), which wakes the waiting nodes.

use std::{sync::LazyLock, time::Duration};

use cachette_core::{CacheError, CacheKey, LeaseEnd, LeaseHolder, LeaseState};
use redis::{Script, Value};

use crate::{RedisTier, Role};

/// `KEYS[1]` lease; `ARGV[1]` token, `ARGV[2]` lease in ms. Takes a lease
/// that is absent or abandoned: `{1, previous}`; else `{0, value, pttl}`.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 2) ~= 'a:' then
  return {0, v, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], 'f:' .. ARGV[1], 'PX', ARGV[2])
return {1, v or ''}
",
    )
});

/// `KEYS[1]` lease; `ARGV[1]` token, `ARGV[2]` lease in ms: extends it if
/// it is still `token`'s fill.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == 'f:' .. ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// `KEYS[1]` lease; `ARGV[1]` token, `ARGV[2]` end state, `ARGV[3]`
/// linger in ms: replaces `token`'s fill by its outcome (compare and set:
/// a holder whose lease expired and was taken over ends nothing).
static END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == 'f:' .. ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
",
    )
});

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn unsupported(operation: &'static str) -> CacheError {
    CacheError::Unsupported {
        backend: "redis (replica tier)",
        operation,
    }
}

/// The holder a lease value names (`None`: free to take).
fn holder_of(value: &[u8]) -> Option<LeaseHolder> {
    match value.get(..2) {
        Some(b"f:") => Some(LeaseHolder::Filling),
        Some(b"F:") => Some(LeaseHolder::Filled),
        Some(b"U:") => Some(LeaseHolder::Unstorable),
        _ => None,
    }
}

/// Reads a `TAKE` reply. An unexpected shape is an error, not a lease: a
/// node must never fill believing it holds a lease it does not.
fn parse_take(reply: &Value) -> Result<LeaseState, CacheError> {
    let bad = || CacheError::backend("redis", "unexpected fill lease reply");
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let bytes = |value: Option<&Value>| match value {
        Some(Value::BulkString(bytes)) => Some(bytes.clone()),
        Some(Value::SimpleString(text)) => Some(text.clone().into_bytes()),
        _ => None,
    };
    match items.first() {
        Some(Value::Int(1)) => {
            let previous = bytes(items.get(1)).unwrap_or_default();
            Ok(LeaseState::Acquired {
                expired: previous.is_empty(),
            })
        }
        Some(Value::Int(0)) => {
            let value = bytes(items.get(1)).ok_or_else(bad)?;
            let remaining = match items.get(2) {
                Some(Value::Int(ms)) => Duration::from_millis(u64::try_from(*ms).unwrap_or(0)),
                _ => Duration::ZERO,
            };
            let holder = holder_of(&value).ok_or_else(bad)?;
            Ok(LeaseState::Held { holder, remaining })
        }
        _ => Err(bad()),
    }
}

impl RedisTier {
    fn lease_key(&self, key: &CacheKey) -> String {
        self.space.keys.lease(key.as_str())
    }

    /// The master's shared connection, for lease calls (the master is the
    /// one authority on leases; a replica tier has none).
    fn lease_conn(&self, operation: &'static str) -> Result<crate::node::Shared, CacheError> {
        if self.role != Role::Master {
            return Err(unsupported(operation));
        }
        Ok(self.node()?.shared.clone())
    }

    pub(crate) async fn take_lease(
        &self,
        key: &CacheKey,
        token: &str,
        ttl: Duration,
    ) -> Result<LeaseState, CacheError> {
        let mut conn = self.lease_conn("lease")?;
        let reply: Value = TAKE
            .key(self.lease_key(key))
            .arg(token)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        parse_take(&reply)
    }

    pub(crate) async fn renew(
        &self,
        key: &CacheKey,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        let mut conn = self.lease_conn("renew_lease")?;
        let renewed: i64 = RENEW
            .key(self.lease_key(key))
            .arg(token)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(renewed == 1)
    }

    pub(crate) async fn end(
        &self,
        key: &CacheKey,
        token: &str,
        end: LeaseEnd,
        linger: Duration,
    ) -> Result<(), CacheError> {
        let state = match end {
            LeaseEnd::Filled => "F",
            LeaseEnd::Unstorable => "U",
            LeaseEnd::Abandoned => "a",
        };
        let mut conn = self.lease_conn("end_lease")?;
        let ended: i64 = END
            .key(self.lease_key(key))
            .arg(token)
            .arg(state)
            .arg(millis(linger))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.fail(e))?;
        if ended == 1 {
            // Other nodes hear the bus; this node's own waiters (other
            // caches on the namespace) do not: it skips its own messages.
            self.space.fill_wakers.wake(key.as_str());
            self.publish(&mut conn, 'l', key.as_str()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_strictly() {
        let taken = Value::Array(vec![Value::Int(1), Value::BulkString(Vec::new())]);
        assert_eq!(
            parse_take(&taken).unwrap(),
            LeaseState::Acquired { expired: true }
        );
        let after_abandon = Value::Array(vec![Value::Int(1), Value::BulkString(b"a:x".to_vec())]);
        assert_eq!(
            parse_take(&after_abandon).unwrap(),
            LeaseState::Acquired { expired: false }
        );
        let held = Value::Array(vec![
            Value::Int(0),
            Value::BulkString(b"F:tok".to_vec()),
            Value::Int(120),
        ]);
        assert_eq!(
            parse_take(&held).unwrap(),
            LeaseState::Held {
                holder: LeaseHolder::Filled,
                remaining: Duration::from_millis(120)
            }
        );
        // Another program's value under the lease key, or a strange reply:
        // an error, never a lease.
        let foreign = Value::Array(vec![Value::Int(0), Value::BulkString(b"zz".to_vec())]);
        assert!(parse_take(&foreign).is_err());
        assert!(parse_take(&Value::Nil).is_err());
    }
}
