//! What a chaos run will do, decided before it starts: which channels each client
//! holds (the layout) and the fault schedule, both derived from `--seed` alone with a
//! small PRNG of our own (SplitMix64), so the same seed gives the same schedule on
//! every machine and with every version of the `rand` crate.

use serde::{Deserialize, Serialize};

/// SplitMix64: tiny, fast and fully specified (the same numbers everywhere).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The kinds of stream a chaos run checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `$user:<id>`: backend notifications to one user, with history.
    Personal,
    /// `bench:h:<n>`: backend messages to a room with history.
    Room,
    /// `bench:p:<n>`: backend messages to a channel without history.
    Plain,
    /// `room:<n>`: clients publishing to their room over the WebSocket (no history).
    Chat,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Personal, Kind::Room, Kind::Plain, Kind::Chat];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Personal => "personal",
            Kind::Room => "room",
            Kind::Plain => "plain",
            Kind::Chat => "chat",
        }
    }

    /// Whether the channel keeps history (losses must be 0 or announced).
    pub fn has_history(self) -> bool {
        matches!(self, Kind::Personal | Kind::Room)
    }
}

/// History rules of a chaos run, given to the gateways and the publisher alike:
/// personal channels and history rooms keep history (long enough that nothing is
/// trimmed in a run), plain channels and chat rooms do not.
pub const HISTORY_RULES: [&str; 2] = ["$user:* 1000 1h", "bench:h:* 5000 1h"];

/// Which channels each client holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Layout {
    pub clients: usize,
    /// History rooms (`bench:h:<n>`); client `i` is in room `i % rooms`. 0: none.
    pub rooms: usize,
    /// Plain channels (`bench:p:<n>`); client `i` is on `i % plain`. 0: none.
    pub plain: usize,
    /// Clients per chat room (`room:<i / chat_size>`). 0: no chat.
    pub chat_size: usize,
}

impl Layout {
    pub fn personal(&self, i: usize) -> String {
        protocol::channel::personal(&crate::conn::user_id(i))
    }

    pub fn room(&self, i: usize) -> Option<String> {
        (self.rooms > 0).then(|| format!("bench:h:{}", i % self.rooms))
    }

    pub fn plain(&self, i: usize) -> Option<String> {
        (self.plain > 0).then(|| format!("bench:p:{}", i % self.plain))
    }

    pub fn chat(&self, i: usize) -> Option<String> {
        (self.chat_size > 0).then(|| format!("room:{}", i / self.chat_size))
    }

    pub fn chat_rooms(&self) -> usize {
        if self.chat_size == 0 {
            0
        } else {
            self.clients.div_ceil(self.chat_size)
        }
    }

    /// The clients of chat room `r`.
    pub fn chat_members(&self, r: usize) -> std::ops::Range<usize> {
        let lo = (r * self.chat_size).min(self.clients);
        let hi = ((r + 1) * self.chat_size).min(self.clients);
        lo..hi
    }

    /// Every channel of client `i`, personal first, with its kind.
    pub fn channels(&self, i: usize) -> Vec<(Kind, String)> {
        let mut v = vec![(Kind::Personal, self.personal(i))];
        if let Some(c) = self.room(i) {
            v.push((Kind::Room, c));
        }
        if let Some(c) = self.plain(i) {
            v.push((Kind::Plain, c));
        }
        if let Some(c) = self.chat(i) {
            v.push((Kind::Chat, c));
        }
        v
    }

    /// Every distinct channel any client holds (for routing checks and markers).
    pub fn all_channels(&self) -> Vec<(Kind, String)> {
        let mut v: Vec<(Kind, String)> = (0..self.clients)
            .map(|i| (Kind::Personal, self.personal(i)))
            .collect();
        v.extend((0..self.rooms.min(self.clients)).map(|r| (Kind::Room, format!("bench:h:{r}"))));
        v.extend((0..self.plain.min(self.clients)).map(|p| (Kind::Plain, format!("bench:p:{p}"))));
        v.extend((0..self.chat_rooms()).map(|r| (Kind::Chat, format!("room:{r}"))));
        v
    }
}

/// The faults a controller can inject.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a gateway, restart it on the same ports after a pause.
    GatewayKill,
    /// SIGTERM a gateway (it drains with 1001), restart it once it exited.
    GatewayTerm,
    /// SIGKILL Redis (AOF, fsync always), restart it on the same port.
    RedisKill,
    /// SIGTERM Redis (clean shutdown), restart it on the same port.
    RedisTerm,
    /// Stop forwarding between one gateway and Redis (connections stay open).
    Freeze,
    /// Add a one-way delay to every byte between one gateway and Redis.
    Delay,
    /// Close every connection between one gateway and Redis at once.
    Cut,
    /// A share of the clients stop reading their socket for a while.
    Stall,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::GatewayKill,
        FaultKind::GatewayTerm,
        FaultKind::RedisKill,
        FaultKind::RedisTerm,
        FaultKind::Freeze,
        FaultKind::Delay,
        FaultKind::Cut,
        FaultKind::Stall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::GatewayKill => "gateway-kill",
            FaultKind::GatewayTerm => "gateway-term",
            FaultKind::RedisKill => "redis-kill",
            FaultKind::RedisTerm => "redis-term",
            FaultKind::Freeze => "freeze",
            FaultKind::Delay => "delay",
            FaultKind::Cut => "cut",
            FaultKind::Stall => "stall",
        }
    }

    fn on_gateway(self) -> bool {
        matches!(
            self,
            FaultKind::GatewayKill
                | FaultKind::GatewayTerm
                | FaultKind::Freeze
                | FaultKind::Delay
                | FaultKind::Cut
        )
    }

    fn takes_gateway_down(self) -> bool {
        matches!(self, FaultKind::GatewayKill | FaultKind::GatewayTerm)
    }

    fn on_redis(self) -> bool {
        matches!(self, FaultKind::RedisKill | FaultKind::RedisTerm)
    }

    /// How long the fault holds, in ms (down time, freeze, delay or stall).
    fn hold_range(self) -> (u64, u64) {
        match self {
            FaultKind::GatewayKill | FaultKind::GatewayTerm => (300, 2000),
            FaultKind::RedisKill | FaultKind::RedisTerm => (300, 2000),
            FaultKind::Freeze => (1000, 4000),
            FaultKind::Delay => (2000, 6000),
            FaultKind::Cut => (0, 0),
            FaultKind::Stall => (2000, 6000),
        }
    }

    /// Time the target stays busy after the hold (restart, drain, reconnects).
    fn margin_ms(self) -> u64 {
        match self {
            FaultKind::GatewayKill => 2000,
            FaultKind::GatewayTerm => 4000,
            FaultKind::RedisKill | FaultKind::RedisTerm => 3000,
            FaultKind::Freeze | FaultKind::Delay => 1000,
            FaultKind::Cut => 1000,
            FaultKind::Stall => 0,
        }
    }
}

/// Duration range of a silent stall, ms (see [`schedule`]).
pub const SILENT_STALL_MS: (u64, u64) = (4_600, 5_400);

/// One planned fault.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// From the start of the traffic, ms.
    pub at_ms: u64,
    /// How long it holds, ms (0 for a cut).
    pub hold_ms: u64,
    /// The gateway (index) for gateway and proxy faults.
    pub gateway: Option<usize>,
    /// One-way delay for `delay`, ms.
    pub delay_ms: Option<u64>,
    /// The stalled clients for `stall`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub clients: Vec<usize>,
    /// For `stall`: the clients keep answering heartbeats blindly (pong without
    /// reading), so only the gateway's outbound path notices them. Stalls alternate:
    /// the first is silent (it starts right after the client's next pong and lasts
    /// 4.6-5.4 s: past the gateway's heartbeat timeout with the chaos default of
    /// 2 s), the next blind, and so on.
    pub blind: bool,
}

/// What the schedule is made from.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    pub seed: u64,
    pub duration_ms: u64,
    /// Mean time between fault starts.
    pub every_ms: u64,
    pub kinds: Vec<FaultKind>,
    pub gateways: usize,
    pub clients: usize,
    /// Share of the clients one stall affects.
    pub stall_fraction: f64,
}

/// The fault schedule: deterministic in `spec`, every fault over (target back) by
/// the end of the traffic, at most `gateways - 1` gateways down at once, one fault
/// per target at a time, and each enabled kind at least once when time allows.
pub fn schedule(spec: &ScheduleSpec) -> Vec<Fault> {
    let mut rng = Rng::new(spec.seed);
    let mut out = Vec::new();
    if spec.kinds.is_empty() || spec.every_ms == 0 {
        return out;
    }
    let mut kinds = spec.kinds.clone();
    kinds.sort();
    kinds.dedup();
    // First each kind once, in a seeded order; then seeded picks.
    let mut first: Vec<FaultKind> = kinds.clone();
    for i in (1..first.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        first.swap(i, j);
    }
    let mut gw_busy = vec![0u64; spec.gateways];
    // (start, end) of gateway down times, to keep one gateway up.
    let mut down: Vec<(u64, u64)> = Vec::new();
    let mut redis_busy = 0u64;
    let mut stall_busy = 0u64;
    let mut last_down: Option<usize> = None;
    let mut stalls = 0u64;
    let mut t = spec.every_ms / 2;
    let mut round = 0usize;
    // A kind that did not fit is tried again at the next slots (not replaced by
    // whatever fits, which would favour the short faults).
    let mut carried: Option<(FaultKind, u32)> = None;
    while t < spec.duration_ms {
        let (kind, tries) = match carried.take() {
            Some(c) => c,
            None if round < first.len() => {
                round += 1;
                (first[round - 1], 0)
            }
            None => (kinds[rng.below(kinds.len() as u64) as usize], 0),
        };
        let (lo, hi) = kind.hold_range();
        let hold = rng.between(lo, hi);
        let end = t + hold + kind.margin_ms();
        let mut placed = None;
        if end <= spec.duration_ms {
            if kind.on_gateway() {
                // A gateway that was just restarted holds few clients (they moved
                // away and come back only when they reconnect for another reason):
                // prefer the others.
                let mut free: Vec<usize> =
                    (0..spec.gateways).filter(|g| gw_busy[*g] <= t).collect();
                if free.len() > 1
                    && let Some(last) = last_down
                {
                    free.retain(|g| *g != last);
                }
                let overlapping = down.iter().filter(|(s, e)| *s < end && t < *e).count();
                let room = !kind.takes_gateway_down() || overlapping + 1 < spec.gateways;
                if !free.is_empty() && room {
                    let g = free[rng.below(free.len() as u64) as usize];
                    gw_busy[g] = end;
                    if kind.takes_gateway_down() {
                        down.push((t, end));
                        last_down = Some(g);
                    }
                    let delay_ms = (kind == FaultKind::Delay).then(|| rng.between(20, 200));
                    placed = Some(Fault {
                        kind,
                        at_ms: t,
                        hold_ms: hold,
                        gateway: Some(g),
                        delay_ms,
                        clients: Vec::new(),
                        blind: false,
                    });
                }
            } else if kind.on_redis() {
                if redis_busy <= t {
                    redis_busy = end;
                    placed = Some(Fault {
                        kind,
                        at_ms: t,
                        hold_ms: hold,
                        gateway: None,
                        delay_ms: None,
                        clients: Vec::new(),
                        blind: false,
                    });
                }
            } else if stall_busy <= t && spec.clients > 0 {
                let blind = stalls % 2 == 1;
                // A silent stall starts right after the client answered a ping and
                // outlasts two heartbeats (2 s each by default), so the gateway closes
                // the connection 4 s in, and the client reads again 0.6-1.4 s later:
                // within the time a gateway lingers to deliver its close frame.
                let hold = if blind {
                    hold
                } else {
                    SILENT_STALL_MS.0 + hold % (SILENT_STALL_MS.1 - SILENT_STALL_MS.0 + 1)
                };
                if t + hold > spec.duration_ms {
                    carried = (tries < 3).then_some((kind, tries + 1));
                    let step = (spec.every_ms as f64 * (0.5 + rng.unit())) as u64;
                    t += step.max(1);
                    continue;
                }
                stalls += 1;
                stall_busy = t + hold;
                let n = ((spec.clients as f64 * spec.stall_fraction).ceil() as usize)
                    .clamp(1, spec.clients);
                let mut chosen: Vec<usize> = Vec::with_capacity(n);
                let mut seen = std::collections::HashSet::new();
                while chosen.len() < n {
                    let c = rng.below(spec.clients as u64) as usize;
                    if seen.insert(c) {
                        chosen.push(c);
                    }
                }
                chosen.sort_unstable();
                placed = Some(Fault {
                    kind,
                    at_ms: t,
                    hold_ms: hold,
                    gateway: None,
                    delay_ms: None,
                    clients: chosen,
                    blind,
                });
            }
        }
        match placed {
            Some(f) => out.push(f),
            None if tries < 3 => carried = Some((kind, tries + 1)),
            None => {}
        }
        let step = (spec.every_ms as f64 * (0.5 + rng.unit())) as u64;
        t += step.max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> ScheduleSpec {
        ScheduleSpec {
            seed,
            duration_ms: 60_000,
            every_ms: 2_000,
            kinds: FaultKind::ALL.to_vec(),
            gateways: 3,
            clients: 200,
            stall_fraction: 0.05,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(schedule(&spec(7)), schedule(&spec(7)));
        assert_ne!(schedule(&spec(7)), schedule(&spec(8)));
        // SplitMix64 is fixed: the first number for seed 0 never changes.
        assert_eq!(Rng(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn schedule_covers_every_kind_and_ends_in_time() {
        let s = spec(3);
        let plan = schedule(&s);
        for k in FaultKind::ALL {
            assert!(plan.iter().any(|f| f.kind == k), "{k:?} missing");
        }
        for f in &plan {
            assert!(f.at_ms + f.hold_ms <= s.duration_ms, "{f:?}");
            if f.kind == FaultKind::Stall {
                assert_eq!(f.clients.len(), 10);
            }
        }
        // Never all gateways down at once.
        for f in plan.iter().filter(|f| f.kind.takes_gateway_down()) {
            let t = f.at_ms;
            let down = plan
                .iter()
                .filter(|g| {
                    g.kind.takes_gateway_down()
                        && g.at_ms <= t
                        && t < g.at_ms + g.hold_ms + g.kind.margin_ms()
                })
                .count();
            assert!(down < 3, "{plan:?}");
        }
    }

    #[test]
    fn layout_names_and_members() {
        let l = Layout {
            clients: 25,
            rooms: 3,
            plain: 2,
            chat_size: 10,
        };
        assert_eq!(l.room(4).as_deref(), Some("bench:h:1"));
        assert_eq!(l.plain(3).as_deref(), Some("bench:p:1"));
        assert_eq!(l.chat(24).as_deref(), Some("room:2"));
        assert_eq!(l.chat_rooms(), 3);
        assert_eq!(l.chat_members(2), 20..25);
        assert_eq!(l.channels(0).len(), 4);
        assert_eq!(l.all_channels().len(), 25 + 3 + 2 + 3);
        for (_, c) in l.all_channels() {
            if !c.starts_with('$') {
                assert!(protocol::channel::validate(&c).is_ok());
            }
        }
    }
}
