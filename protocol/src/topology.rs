//! Where a channel lives when Tidings spreads its channels over several Redis servers.
//! The gateway and the publisher SDK both route with these functions, so they always
//! agree on a channel's home.
//!
//! - **Sharded** (several independent Redis instances): a channel is owned by instance
//!   [`shard_of`]`(channel, n)`, a jump consistent hash of the channel name. Adding an
//!   instance moves about `1/n` of the channels (with their history) to it.
//! - **Cluster** (one Redis Cluster): a channel belongs to partition
//!   [`Partitions::of`]; every Redis name of the channel (its shard pub/sub channel and
//!   all its keys) carries that partition's hash tag, so they all sit in one slot and
//!   one Lua script may touch them. Partition `i`'s tag is chosen so its slot falls in
//!   the `i`-th of `P` equal slot ranges: partitions spread evenly over the masters of
//!   a cluster whose slots are spread evenly.

use std::sync::Arc;

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Most partitions a cluster deployment may use (each is a pub/sub connection per
/// gateway node).
pub const MAX_PARTITIONS: usize = 1024;
/// Default number of partitions in cluster mode.
pub const DEFAULT_PARTITIONS: usize = 16;

/// FNV-1a (64 bit) of a channel name: fixed forever, so routing never changes
/// between versions or platforms.
pub fn channel_hash(channel: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping and Veach): a bucket in `0..buckets` for `key`;
/// growing `buckets` by one moves only `1/(buckets+1)` of the keys. `buckets == 0`
/// is treated as 1.
pub fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = buckets.max(1) as i64;
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// The instance (of `shards`) that owns a channel in sharded mode.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    jump_hash(channel_hash(channel), shards)
}

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of a key (or shard channel), honouring `{hash tags}`.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % SLOTS
}

/// The partitions of a cluster deployment and their hash tags. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    tags: Arc<[String]>,
}

impl Partitions {
    /// `n` partitions (1..=[`MAX_PARTITIONS`]); every gateway and publisher of a
    /// deployment must use the same `n`.
    pub fn new(n: usize) -> Result<Self, String> {
        if n == 0 || n > MAX_PARTITIONS {
            return Err(format!("must be 1..={MAX_PARTITIONS}, not {n}"));
        }
        let tags = (0..n).map(|i| tag_for(i, n)).collect();
        Ok(Self { tags })
    }

    /// How many partitions there are.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Always false: there is at least one partition.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// The partition a channel belongs to.
    pub fn of(&self, channel: &str) -> usize {
        jump_hash(channel_hash(channel), self.tags.len())
    }

    /// The hash tag (without braces) of partition `i`.
    pub fn tag(&self, i: usize) -> &str {
        &self.tags[i % self.tags.len()]
    }

    /// The cluster slot every name of partition `i` hashes to.
    pub fn slot(&self, i: usize) -> u16 {
        key_slot(self.tag(i).as_bytes())
    }

    /// The slot range `[start, end)` that partition `i`'s tag was chosen from.
    pub fn range(i: usize, n: usize) -> (u16, u16) {
        let slots = usize::from(SLOTS);
        ((i * slots / n) as u16, ((i + 1) * slots / n) as u16)
    }
}

/// The first decimal number whose slot lies in partition `i`'s range: deterministic,
/// short, and found after about `n` tries.
fn tag_for(i: usize, n: usize) -> String {
    let (start, end) = Partitions::range(i, n);
    (0u64..)
        .map(|k| k.to_string())
        .find(|t| (start..end).contains(&(crc16(t.as_bytes()) % SLOTS)))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // `CLUSTER KEYSLOT 123456789` is 12739 (CRC16 XMODEM check value 0x31C3).
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag or an unclosed brace hashes the whole key.
        assert_eq!(key_slot(b"{}x"), crc16(b"{}x") % SLOTS);
        assert_eq!(key_slot(b"{x"), crc16(b"{x") % SLOTS);
        // Only the first tag counts.
        assert_eq!(key_slot(b"t:{a}:hist:{b}"), key_slot(b"a"));
    }

    #[test]
    fn jump_hash_is_stable_and_moves_little() {
        assert_eq!(jump_hash(0, 1), 0);
        assert_eq!(jump_hash(42, 0), 0);
        // Pinned (and cross-checked with an independent implementation): a change
        // here would move every deployment's channels.
        assert_eq!(jump_hash(1, 10), 6);
        assert_eq!(jump_hash(0xdead_beef, 100), 87);
        assert_eq!(shard_of("news", 3), 2);
        let moved = (0..10_000u64)
            .filter(|&k| jump_hash(k, 10) != jump_hash(k, 11))
            .count();
        // Growing 10 -> 11 buckets moves about 1/11 of the keys, all to the new one.
        assert!((700..1100).contains(&moved), "{moved}");
        for k in 0..10_000u64 {
            let (a, b) = (jump_hash(k, 10), jump_hash(k, 11));
            assert!(a == b || b == 10);
        }
    }

    #[test]
    fn shards_spread_evenly() {
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            counts[shard_of(&format!("$user:{i}"), 3)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_of("news", 3), shard_of("news", 3));
    }

    #[test]
    fn every_tag_is_in_its_slot_range() {
        for n in [1, 2, 3, 16, 32, 100, 1024] {
            let p = Partitions::new(n).unwrap();
            assert_eq!(p.len(), n);
            for i in 0..n {
                let (start, end) = Partitions::range(i, n);
                let slot = p.slot(i);
                assert!((start..end).contains(&slot), "n={n} i={i} slot={slot}");
                assert!(!p.tag(i).is_empty());
            }
        }
        assert!(Partitions::new(0).is_err());
        assert!(Partitions::new(MAX_PARTITIONS + 1).is_err());
        // Deterministic: the same tags every time.
        assert_eq!(Partitions::new(16).unwrap(), Partitions::new(16).unwrap());
    }

    #[test]
    fn channels_spread_over_partitions() {
        let p = Partitions::new(16).unwrap();
        let mut counts = [0usize; 16];
        for i in 0..32_000 {
            counts[p.of(&format!("room:{i}"))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1_700..2_300).contains(&c)),
            "{counts:?}"
        );
    }
}
