//! A small seeded mutation fuzzer for stable Rust: the property tests
//! (`protocol/tests/fuzz_props.rs`, `gateway/tests/fuzz_props.rs`, which include this
//! file by path) run the same checks as the libFuzzer targets over mutations of the
//! same seeds, deterministically (fixed seed, fixed number of inputs), so CI catches
//! regressions without nightly.
//!
//! Each input is a seed with one to four stacked mutations in the style of libFuzzer
//! (bit flips, interesting bytes, insertions, deletions, duplicated chunks,
//! truncation, splicing with another seed, dictionary tokens) plus mutations aimed at
//! this protocol: runs of opening brackets or MessagePack container headers (deep
//! nesting, 1 to 100,000 levels) and extreme numbers.
//!
//! Every check runs on a thread with a 2 MiB stack, a tokio worker's default, so a
//! decoder that recurses too deeply fails here in the test suite's debug build as it
//! would in a debug gateway.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// splitmix64: tiny, fast and good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Which syntax the mutations aim at: what a nesting run and a number look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Json,
    MsgPack,
}

const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc7, 0xca, 0xcb, 0xcf, 0xd3, 0xd4,
    0xd9, 0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x9f, 0x80, 0x8f, 0xa0, 0xbf, b'"', b'\\', b'[', b']',
    b'{', b'}', b',', b':', b'0', b'-', b'e', b'.', b' ',
];

const DEPTHS: &[usize] = &[1, 2, 63, 64, 65, 66, 67, 127, 128, 129, 1000, 100_000];

const JSON_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1.5",
    "1e400",
    "-1e400",
    "1e-400",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "4294967296",
    "1767229200",
    "99999999999999999999999999999999999999",
    "0.0000000000000000000000000000001",
];

/// A run of `n` openings: arrays or objects (JSON), arrays or maps (MessagePack).
fn nesting(rng: &mut Rng, syntax: Syntax, n: usize, close: bool) -> Vec<u8> {
    let object = rng.below(2) == 0;
    match syntax {
        Syntax::Json => {
            let (open, end): (&[u8], &[u8]) = if object {
                (b"{\"a\":", b"}")
            } else {
                (b"[", b"]")
            };
            let mut v = open.repeat(n);
            if close {
                v.push(b'1');
                v.extend(end.repeat(n));
            }
            v
        }
        Syntax::MsgPack => {
            let open: &[u8] = match rng.below(4) {
                0 => &[0x91],
                1 => &[0x81, 0xa1, b'a'],
                2 => &[0xdc, 0x00, 0x01],
                _ => &[0xde, 0x00, 0x01, 0xa1, b'a'],
            };
            let mut v = open.repeat(n);
            if close {
                v.push(0x01);
            }
            v
        }
    }
}

fn number(rng: &mut Rng, syntax: Syntax) -> Vec<u8> {
    match syntax {
        Syntax::Json => rng.pick(JSON_NUMBERS).as_bytes().to_vec(),
        Syntax::MsgPack => match rng.below(8) {
            0 => vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            1 => vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
            2 => vec![0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1], // NaN
            3 => vec![0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0], // +inf
            4 => vec![0xca, 0xff, 0x80, 0, 0],             // -inf (f32)
            5 => vec![0xd0, 0xff],
            6 => vec![0xc7, 0x01, 0x05, 0x00], // ext
            _ => vec![0xc4, 0x01, 0x00],       // bin
        },
    }
}

/// One mutation of `data` in place.
fn mutate_once(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    seeds: &[Vec<u8>],
    dict: &[&[u8]],
    syntax: Syntax,
) {
    let len = data.len();
    let pos = |rng: &mut Rng| rng.below(len + 1);
    match rng.below(13) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = *rng.pick(INTERESTING);
        }
        2 => {
            let i = pos(rng);
            let n = 1 + rng.below(4);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(i..i, bytes);
        }
        3 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(16));
            data.drain(i..i + n);
        }
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            let chunk = data[i..i + n].to_vec();
            let at = pos(rng);
            data.splice(at..at, chunk);
        }
        5 if len > 0 => data.truncate(rng.below(len)),
        6 if !seeds.is_empty() => {
            let other = rng.pick(seeds);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        7 if !dict.is_empty() => {
            let i = pos(rng);
            let token = rng.pick(dict);
            data.splice(i..i, token.iter().copied());
        }
        8 if !dict.is_empty() && len > 0 => {
            let token = rng.pick(dict);
            let i = rng.below(len);
            let end = (i + token.len()).min(len);
            data.splice(i..end, token.iter().copied());
        }
        9 | 10 => {
            let n = *rng.pick(DEPTHS);
            let close = rng.below(2) == 0;
            let run = nesting(rng, syntax, n, close);
            let i = pos(rng);
            data.splice(i..i, run);
        }
        11 => {
            let num = number(rng, syntax);
            let i = pos(rng);
            // Replace a short stretch (often a number or a scalar) with it.
            let end = (i + rng.below(4)).min(len);
            data.splice(i..end, num);
        }
        _ if len > 0 => {
            let i = rng.below(len);
            data[i] = data[i].wrapping_add(rng.below(7) as u8).wrapping_sub(3);
        }
        _ => data.push(rng.next() as u8),
    }
}

/// One input: a seed with one to four mutations.
pub fn mutant(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]], syntax: Syntax) -> Vec<u8> {
    let mut data = if seeds.is_empty() {
        Vec::new()
    } else {
        rng.pick(seeds).clone()
    };
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, &mut data, seeds, dict, syntax);
    }
    data
}

/// Inputs per property test: `TIDINGS_FUZZ_ITERS` or the test's default.
pub fn iterations(default: usize) -> usize {
    std::env::var("TIDINGS_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The mutation seed: `TIDINGS_FUZZ_SEED` or a fixed default, so runs repeat.
pub fn seed() -> u64 {
    std::env::var("TIDINGS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7469_6469_6e67_7321)
}

/// Stack of the thread the checks run on: a tokio worker's default.
pub const STACK: usize = 2 << 20;

/// What a run did.
#[derive(Debug, Default)]
pub struct Run {
    pub inputs: usize,
    pub elapsed: std::time::Duration,
}

/// Runs `check` on every seed and then on `iters` mutants, on a thread with a
/// [`STACK`]-byte stack. A failing input is printed (escaped) and written to
/// `target/fuzz-props/<name>-<n>` before the panic is passed on.
pub fn run<F>(
    name: &str,
    seeds: Vec<Vec<u8>>,
    dict: Vec<Vec<u8>>,
    syntax: Syntax,
    iters: usize,
    check: F,
) -> Run
where
    F: Fn(&[u8]) + Send + Sync + 'static,
{
    let name = name.to_owned();
    let handle = std::thread::Builder::new()
        .name(format!("fuzz-{name}"))
        .stack_size(STACK)
        .spawn(move || {
            let start = std::time::Instant::now();
            let dict: Vec<&[u8]> = dict.iter().map(|d| d.as_slice()).collect();
            let mut rng = Rng::new(seed() ^ fnv(name.as_bytes()));
            let mut inputs = 0;
            let mut one = |n: usize, data: &[u8]| {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(data))) {
                    report(&name, n, data);
                    resume_unwind(panic);
                }
                inputs += 1;
            };
            for (n, s) in seeds.iter().enumerate() {
                one(n, s);
            }
            for n in 0..iters {
                let data = mutant(&mut rng, &seeds, &dict, syntax);
                one(seeds.len() + n, &data);
            }
            Run {
                inputs,
                elapsed: start.elapsed(),
            }
        })
        .unwrap_or_else(|e| panic!("cannot spawn the fuzz thread: {e}"));
    match handle.join() {
        Ok(run) => run,
        Err(panic) => resume_unwind(panic),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn report(name: &str, n: usize, data: &[u8]) {
    // Integration tests have a scratch directory in the target directory.
    let dir = option_env!("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("fuzz-props");
    let path = dir.join(format!("{name}-{n}"));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, data))
        .map(|()| path.display().to_string())
        .unwrap_or_else(|e| format!("(not saved: {e})"));
    let shown: String = data
        .iter()
        .take(2048)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    eprintln!(
        "fuzz property {name}: input {n} ({} bytes) failed, saved as {saved}:\n{shown}",
        data.len()
    );
}
