//! Counting what arrived: HDR latency histograms that travel between processes, the
//! per-stream sequence tracker that tells lost, duplicated and out-of-order messages
//! apart, and the counters a client group keeps.

use std::collections::BTreeSet;

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Highest latency recorded, in microseconds (larger values saturate).
const MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds (1 us .. 10 min, 3 significant digits) that
/// serializes as base64 of the HdrHistogram V2 format, so workers can send it as JSON.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        Hist(
            Histogram::new_with_bounds(1, MAX_US, 3)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
        )
    }

    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The usual percentiles; zeros for an empty histogram.
    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut buf)
            .map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        let mut out = Hist::new();
        out.0
            .add(&h)
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        Ok(out)
    }
}

/// Percentiles of a histogram, in its unit (microseconds for latencies).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// What one received sequence number turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one expected, or a later one (the ones skipped may still come).
    InOrder,
    /// One that was skipped earlier and arrived late.
    OutOfOrder,
    /// Already received.
    Duplicate,
}

/// Where one receiver stands in one stream of sequence numbers (0, 1, 2, ...).
/// Skipped numbers are remembered, so a late arrival counts as out of order and a
/// repeat as a duplicate; what never arrives is counted as lost by the caller, from
/// the number expected minus the number of distinct ones received.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    next: u64,
    missing: BTreeSet<u64>,
}

/// Most skipped numbers remembered per stream (beyond that, later arrivals of the
/// oldest gaps would be miscounted as duplicates; far above smoke and benchmark gaps).
const MAX_MISSING: usize = 1 << 20;

impl SeqTracker {
    pub fn see(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
            Seen::InOrder
        } else if seq > self.next {
            for s in self.next..seq {
                if self.missing.len() >= MAX_MISSING {
                    break;
                }
                self.missing.insert(s);
            }
            self.next = seq + 1;
            Seen::InOrder
        } else if self.missing.remove(&seq) {
            Seen::OutOfOrder
        } else {
            Seen::Duplicate
        }
    }

    /// Distinct sequence numbers received so far.
    pub fn unique(&self) -> u64 {
        self.next - self.missing.len() as u64
    }

    /// The highest sequence number seen plus one.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// Delivery counters of one cohort of clients (the steady ones, or the ones a
/// scenario drops and brings back).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cohort {
    /// Clients in the cohort that connected.
    pub clients: u64,
    /// Message frames received (including duplicates).
    pub deliveries: u64,
    /// Distinct messages received.
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl Cohort {
    pub fn add(&mut self, o: &Cohort) {
        self.clients += o.clients;
        self.deliveries += o.deliveries;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
    }

    pub fn count(&mut self, seen: Seen) {
        self.deliveries += 1;
        match seen {
            Seen::InOrder => self.unique += 1,
            Seen::OutOfOrder => {
                self.unique += 1;
                self.out_of_order += 1;
            }
            Seen::Duplicate => self.duplicates += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_tells_late_from_repeated() {
        let mut t = SeqTracker::default();
        let mut c = Cohort::default();
        for s in [0, 1, 3, 2, 3, 5] {
            c.count(t.see(s));
        }
        assert_eq!(c.deliveries, 6);
        assert_eq!(c.unique, 5);
        assert_eq!(c.duplicates, 1);
        assert_eq!(c.out_of_order, 1);
        assert_eq!(t.unique(), 5);
        assert_eq!(t.next(), 6);
    }

    #[test]
    fn hist_survives_json() {
        let mut h = Hist::new();
        for v in [1, 10, 100, 1000, 10_000] {
            h.record(v);
        }
        let text = serde_json::to_string(&h).unwrap_or_default();
        let back: Hist = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(back.len(), 5);
        assert_eq!(back.summary().max, h.summary().max);
    }
}
