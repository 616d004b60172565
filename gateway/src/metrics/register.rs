//! Registering metrics: names and help texts are constants, so a failure here is a
//! programming error caught by any test run, not something input can cause.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

pub(super) fn gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let v =
        IntGaugeVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(v.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    v
}

pub(super) fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(v.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    v
}

pub(super) fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

pub(super) fn float_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    g
}

pub(super) fn float_gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> GaugeVec {
    let v =
        GaugeVec::new(Opts::new(name, help), &[label]).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(v.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    v
}

pub(super) fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    c
}

pub(super) fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    r.register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    h
}
