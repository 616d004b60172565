//! The end-of-run check of every numbered stream: for each client and each of its
//! streams, what was published (the publisher's table) against what arrived (the
//! client's received set), with losses split into those the gateway announced
//! (`recovered: false`) and those it did not.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::client::{ChanSummary, ClientSummary, Notice};
use super::lanes::LaneResult;
use super::plan::{Kind, Layout};

/// A set of sequence numbers as sorted, disjoint, non-adjacent half-open ranges.
/// Streams arrive mostly in order, so a set is usually one range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet(Vec::new())
    }

    pub fn contains(&self, v: u64) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi <= v);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= v)
    }

    /// Inserts `v`; false when it was already there.
    pub fn insert(&mut self, v: u64) -> bool {
        // The common case: right after the last range.
        if let Some(last) = self.0.last_mut() {
            if last.1 == v {
                last.1 += 1;
                return true;
            }
            if last.0 <= v && v < last.1 {
                return false;
            }
        }
        // Ranges before `i` end below `v`; range `i`, if any, ends at or after it.
        let i = self.0.partition_point(|&(_, hi)| hi < v);
        match self.0.get(i).copied() {
            Some((lo, hi)) if lo <= v && v < hi => false,
            Some((_, hi)) if hi == v => {
                self.0[i].1 = v + 1;
                if self.0.get(i + 1).is_some_and(|&(lo, _)| lo == v + 1) {
                    self.0[i].1 = self.0[i + 1].1;
                    self.0.remove(i + 1);
                }
                true
            }
            Some((lo, _)) if lo == v + 1 => {
                self.0[i].0 = v;
                true
            }
            _ => {
                self.0.insert(i, (v, v + 1));
                true
            }
        }
    }

    /// Adds every value in `lo..hi`.
    pub fn insert_range(&mut self, lo: u64, hi: u64) {
        if lo >= hi {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let (mut nlo, mut nhi) = (lo, hi);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if b < nlo {
                out.push((a, b));
            } else if nhi < a {
                if !placed {
                    out.push((nlo, nhi));
                    placed = true;
                }
                out.push((a, b));
            } else {
                nlo = nlo.min(a);
                nhi = nhi.max(b);
            }
        }
        if !placed {
            out.push((nlo, nhi));
        }
        out.sort_unstable();
        self.0 = out;
    }

    pub fn len(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The highest value, if any.
    pub fn max(&self) -> Option<u64> {
        self.0.last().map(|&(_, hi)| hi - 1)
    }

    /// How many values lie in `lo..hi`.
    pub fn count_in(&self, lo: u64, hi: u64) -> u64 {
        self.0
            .iter()
            .map(|&(a, b)| b.min(hi).saturating_sub(a.max(lo)))
            .sum()
    }

    /// The values of `lo..hi` that are not in the set.
    pub fn missing_in(&self, lo: u64, hi: u64) -> RangeSet {
        let mut out = Vec::new();
        let mut at = lo;
        for &(a, b) in &self.0 {
            if b <= at {
                continue;
            }
            if a >= hi {
                break;
            }
            if a > at {
                out.push((at, a.min(hi)));
            }
            at = at.max(b);
            if at >= hi {
                break;
            }
        }
        if at < hi {
            out.push((at, hi));
        }
        RangeSet(out)
    }

    /// How many values the two sets share.
    pub fn overlap(&self, other: &RangeSet) -> u64 {
        other.0.iter().map(|&(a, b)| self.count_in(a, b)).sum()
    }

    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }
}

/// Delivery figures of one kind of stream, summed over every (client, stream).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamFigures {
    /// Publishing streams of this kind (channels, or chat senders).
    pub streams: u64,
    /// Messages the publishers got acknowledged by Redis (or by the gateway, chat).
    pub published: u64,
    /// Deliveries expected: each published message times the clients holding the channel.
    pub expected: u64,
    /// Distinct expected messages that arrived.
    pub delivered: u64,
    /// Expected messages that never arrived and that no `recovered: false` covered.
    pub lost: u64,
    /// Expected messages that never arrived, announced by a `recovered: false`.
    pub lost_announced: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// `recovered: false` answers (welcome or subscribe reply).
    pub not_recovered_notices: u64,
    /// Resumes asked for (welcome with `since`, subscribe with `since`).
    pub resumes: u64,
    pub recovered_true: u64,
    /// Resumes whose answer carried no `recovered` at all.
    pub recovered_absent: u64,
    /// Live messages whose offset skipped ahead (the gateway let a gap through).
    pub gaps_seen: u64,
    /// Chat: messages that arrived although their publish was never acknowledged.
    pub unacknowledged_delivered: u64,
    /// Messages beyond what was published (should be 0).
    pub unexpected: u64,
}

impl StreamFigures {
    fn add_counts(&mut self, c: &ChanSummary) {
        self.not_recovered_notices += c.notices.len() as u64;
        self.resumes += c.resumes;
        self.recovered_true += c.recovered_true;
        self.recovered_absent += c.recovered_absent;
        self.gaps_seen += c.gaps_seen;
    }
}

/// The sequence number of history offset `offset` in `epoch`, from the lane's
/// segments (a segment is a run of sequence numbers with consecutive offsets).
fn seq_of(lane: &LaneResult, epoch: &str, offset: u64) -> Option<u64> {
    lane.segments
        .iter()
        .rev()
        .find(|s| s.epoch.as_deref() == Some(epoch) && s.first_offset <= offset)
        .map(|s| s.first_seq + (offset - s.first_offset))
}

/// The sequence numbers a `recovered: false` notice announces as possibly lost:
/// above the highest one the client had when it asked, up to the position the
/// gateway reported (mapped to a sequence number through the publisher's offsets),
/// or, when that position cannot be mapped (no epoch in the answer, or an epoch the
/// publisher never saw), up to the first message that arrived after the notice.
pub fn announced(lane: &LaneResult, n: &Notice) -> RangeSet {
    let lo = n.before.map_or(0, |b| b + 1);
    let upper = match (&n.epoch, n.offset) {
        (Some(e), Some(o)) if !e.is_empty() => seq_of(lane, e, o).map(|s| s + 1),
        _ => None,
    }
    .or(n.after);
    let mut out = RangeSet::new();
    if let Some(hi) = upper {
        out.insert_range(lo, hi);
    }
    out
}

/// Checks one history or plain channel of one client against its lane.
fn check_backend(f: &mut StreamFigures, c: &ChanSummary, lane: &LaneResult) {
    let published = lane.published;
    let empty = RangeSet::new();
    let rx = c.streams.iter().find(|s| s.src.is_none());
    let got = rx.map_or(&empty, |s| &s.got);
    f.expected += published;
    let delivered = got.count_in(0, published);
    f.delivered += delivered;
    f.unexpected += got.len() - delivered - got.count_in(published, published + 1);
    if let Some(s) = rx {
        f.duplicated += s.dups;
        f.out_of_order += s.ooo;
    }
    let missing = got.missing_in(0, published);
    if missing.is_empty() {
        return;
    }
    let mut covered = RangeSet::new();
    if c.kind.has_history() {
        for n in &c.notices {
            for &(a, b) in announced(lane, n).ranges() {
                covered.insert_range(a, b);
            }
        }
    }
    let announced_missing = missing.overlap(&covered);
    f.lost_announced += announced_missing;
    f.lost += missing.len() - announced_missing;
}

/// What the chat senders got acknowledged, by client index.
pub type ChatAcks<'a> = HashMap<usize, &'a RangeSet>;

/// Checks one client's chat room: every member's acknowledged publishes.
fn check_chat(
    f: &mut StreamFigures,
    c: &ChanSummary,
    members: std::ops::Range<usize>,
    acks: &ChatAcks<'_>,
) {
    let empty = RangeSet::new();
    for m in members {
        let acked = acks.get(&m).copied().unwrap_or(&empty);
        let rx = c.streams.iter().find(|s| s.src == Some(m as u64));
        let got = rx.map_or(&empty, |s| &s.got);
        let delivered = got.overlap(acked);
        f.expected += acked.len();
        f.delivered += delivered;
        f.lost += acked.len() - delivered;
        f.unacknowledged_delivered += got.len() - delivered;
        if let Some(s) = rx {
            f.duplicated += s.dups;
            f.out_of_order += s.ooo;
        }
    }
}

/// Per-kind figures over every client.
pub fn figures(
    layout: &Layout,
    clients: &[ClientSummary],
    lanes: &[LaneResult],
) -> BTreeMap<&'static str, StreamFigures> {
    let by_channel: HashMap<&str, &LaneResult> = lanes
        .iter()
        .filter(|l| l.kind != Kind::Chat)
        .map(|l| (l.channel.as_str(), l))
        .collect();
    let acks: ChatAcks<'_> = clients
        .iter()
        .filter_map(|c| c.chat.as_ref().map(|s| (c.idx, &s.acked)))
        .collect();
    let mut out: BTreeMap<&'static str, StreamFigures> = BTreeMap::new();
    for k in Kind::ALL {
        let f = out.entry(k.name()).or_default();
        if k == Kind::Chat {
            for c in clients {
                if let Some(s) = &c.chat {
                    f.streams += 1;
                    f.published += s.acked.len();
                }
            }
        } else {
            for l in lanes.iter().filter(|l| l.kind == k) {
                f.streams += 1;
                f.published += l.published;
            }
        }
    }
    for client in clients {
        for c in &client.channels {
            let f = out.entry(c.kind.name()).or_default();
            f.add_counts(c);
            match c.kind {
                Kind::Chat => {
                    let room = client.idx / layout.chat_size.max(1);
                    check_chat(f, c, layout.chat_members(room), &acks);
                }
                _ => {
                    if let Some(lane) = by_channel.get(c.name.as_str()) {
                        check_backend(f, c, lane);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::client::StreamRx;
    use super::super::lanes::Segment;
    use super::*;

    fn set(v: &[u64]) -> RangeSet {
        let mut s = RangeSet::new();
        for x in v {
            s.insert(*x);
        }
        s
    }

    #[test]
    fn range_set_inserts_in_any_order() {
        let mut s = RangeSet::new();
        for v in [0, 1, 2, 5, 4, 9, 3, 7, 8, 6] {
            assert!(s.insert(v));
        }
        assert_eq!(s.ranges(), &[(0, 10)]);
        assert!(!s.insert(4));
        let mut t = set(&[10, 12, 14]);
        assert_eq!(t.ranges(), &[(10, 11), (12, 13), (14, 15)]);
        assert!(t.insert(11));
        assert_eq!(t.ranges(), &[(10, 13), (14, 15)]);
        assert!(t.insert(13));
        assert_eq!(t.ranges(), &[(10, 15)]);
        assert!(t.insert(3));
        assert!(t.insert(20));
        assert_eq!(t.ranges(), &[(3, 4), (10, 15), (20, 21)]);
        assert!(t.contains(14) && !t.contains(15) && t.contains(3) && !t.contains(0));
        assert_eq!(t.len(), 7);
        assert_eq!(t.count_in(4, 12), 2);
        assert_eq!(
            t.missing_in(0, 22).ranges(),
            &[(0, 3), (4, 10), (15, 20), (21, 22)]
        );
        t.insert_range(0, 12);
        assert_eq!(t.ranges(), &[(0, 15), (20, 21)]);
        t.insert_range(16, 18);
        assert_eq!(t.ranges(), &[(0, 15), (16, 18), (20, 21)]);
        assert_eq!(set(&[1, 2, 3]).overlap(&set(&[2, 3, 4])), 2);
        assert_eq!(t.max(), Some(20));
    }

    fn lane(published: u64) -> LaneResult {
        LaneResult {
            channel: "bench:h:0".into(),
            kind: Kind::Room,
            src: None,
            published,
            uncertain: 0,
            marker_from: None,
            segments: vec![Segment {
                first_seq: 0,
                first_offset: 1,
                epoch: Some("e1".into()),
            }],
        }
    }

    fn chan(got: &[u64], notices: Vec<Notice>) -> ChanSummary {
        ChanSummary {
            kind: Kind::Room,
            name: "bench:h:0".into(),
            marker: true,
            streams: vec![StreamRx {
                src: None,
                got: set(got),
                dups: 0,
                ooo: 0,
            }],
            notices,
            resumes: 0,
            recovered_true: 0,
            recovered_absent: 0,
            gaps_seen: 0,
        }
    }

    #[test]
    fn announced_losses_are_split_from_silent_ones() {
        let l = lane(20);
        // Had 0..=4, resumed, told not recovered at offset 10 (seq 9): 5..=9 may be
        // missing; 12 is missing without any notice.
        let n = Notice {
            before: Some(4),
            epoch: Some("e1".into()),
            offset: Some(10),
            after: Some(10),
        };
        let got: Vec<u64> = (0..5).chain(10..12).chain(13..20).collect();
        let mut f = StreamFigures::default();
        check_backend(&mut f, &chan(&got, vec![n.clone()]), &l);
        assert_eq!((f.expected, f.delivered), (20, 14));
        assert_eq!((f.lost_announced, f.lost), (5, 1));
        // An epoch the publisher never saw: up to the first message after it.
        let odd = Notice {
            epoch: Some("zz".into()),
            ..n.clone()
        };
        assert_eq!(announced(&l, &odd).ranges(), &[(5, 10)]);
        let none = Notice {
            epoch: None,
            offset: None,
            after: None,
            ..n
        };
        assert!(announced(&l, &none).is_empty());
        // Plain channels never count anything as announced.
        let mut p = chan(&got, Vec::new());
        p.kind = Kind::Plain;
        let mut f = StreamFigures::default();
        check_backend(&mut f, &p, &l);
        assert_eq!((f.lost_announced, f.lost), (0, 6));
    }
}
