//! The matmul kernels under the linear layers, and how they are chosen for the CPU the
//! binary runs on.
//!
//! Owns: CPU feature detection, the kernel *level* every call runs at (the best the CPU has,
//! capped by `FRAUDLAB_KERNELS`, or by a scope in tests), and the one line every benchmark
//! prints about the CPU and the kernels that ran.
//!
//! Every fast path is chosen at run time, from the features the CPU reports, never from the
//! build's `target-cpu`; each has a portable twin (plain Rust) that the tests compare it
//! with on the machine they run on.

pub mod gemm_bf16;
pub mod gemv;
pub mod linear;
pub mod quant;
pub mod sgemm;

use std::cell::Cell;
use std::sync::OnceLock;

/// How fast a path a kernel may take, from plain Rust up to the widest SIMD the CPU has.
/// Each level implies the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust loops (the compiler may still vectorise them for the build's target).
    Portable,
    /// AVX2 and FMA intrinsics, 8 lanes.
    Avx2,
    /// AVX-512 (F, BW) intrinsics, 16 lanes.
    Avx512,
    /// AVX-512 plus AVX512-BF16 dot products (`vdpbf16ps`) for bf16 weights.
    Avx512Bf16,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Portable,
        Level::Avx2,
        Level::Avx512,
        Level::Avx512Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// What the CPU offers that the kernels (or a future kernel) care about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512bf16: bool,
    /// AVX512-VNNI (`vpdpbusd`): the quantized dots use it at the AVX-512 levels when present
    /// (the AVX2 dots otherwise).
    pub avx512vnni: bool,
    /// Reported only: no kernel here uses AMX (it could not be run where this was written).
    pub amx_bf16: bool,
}

impl Features {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // AMX has no stable `is_x86_feature_detected!` name: CPUID leaf 7, EDX bit 22.
            let amx = std::arch::x86_64::__cpuid(0).eax >= 7
                && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0;
            Features {
                avx2: is_x86_feature_detected!("avx2"),
                fma: is_x86_feature_detected!("fma"),
                avx512f: is_x86_feature_detected!("avx512f"),
                avx512bw: is_x86_feature_detected!("avx512bw"),
                avx512bf16: is_x86_feature_detected!("avx512bf16"),
                avx512vnni: is_x86_feature_detected!("avx512vnni"),
                amx_bf16: amx,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features::default()
    }

    /// The best level these features allow.
    pub fn best(&self) -> Level {
        if self.avx512f && self.avx512bw && self.avx2 && self.fma {
            if self.avx512bf16 {
                Level::Avx512Bf16
            } else {
                Level::Avx512
            }
        } else if self.avx2 && self.fma {
            Level::Avx2
        } else {
            Level::Portable
        }
    }
}

pub fn features() -> &'static Features {
    static F: OnceLock<Features> = OnceLock::new();
    F.get_or_init(Features::detect)
}

/// The environment variable that caps the kernel level (`portable`, `avx2`, `avx512`,
/// `avx512bf16`, or `auto`).
pub const ENV: &str = "FRAUDLAB_KERNELS";

/// The cap `FRAUDLAB_KERNELS` asks for: None for unset or `auto`, an error for anything else.
pub fn env_cap() -> Result<Option<Level>, String> {
    match std::env::var(ENV) {
        Err(_) => Ok(None),
        Ok(v) if v.is_empty() || v == "auto" => Ok(None),
        Ok(v) => Level::parse(&v)
            .map(Some)
            .ok_or_else(|| format!("{ENV}={v}: use auto, portable, avx2, avx512 or avx512bf16")),
    }
}

/// The level this process runs at: the best the CPU has, capped by `FRAUDLAB_KERNELS` (an
/// invalid value is reported by the CLI at start-up and treated as `auto` here).
pub fn process_level() -> Level {
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| {
        let best = features().best();
        match env_cap() {
            Ok(Some(cap)) => cap.min(best),
            _ => best,
        }
    })
}

thread_local! {
    static SCOPED: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The level a kernel called from this thread runs at (see [`with_level`]).
pub fn level() -> Level {
    SCOPED
        .with(|s| s.get())
        .map(|l| l.min(features().best()))
        .unwrap_or_else(process_level)
}

/// Runs `f` with every kernel it calls at `l` at most (never above what the CPU has): how
/// the tests compare each fast path with the portable one in one process. `f` runs on a
/// thread pool of its own whose threads all carry the level, so kernels that a fused op
/// calls from its worker threads see it too.
pub fn with_level<R: Send>(l: Level, f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .start_handler(move |_| SCOPED.with(|s| s.set(Some(l))))
        .build()
        .expect("a thread pool for a kernel level");
    pool.install(|| {
        SCOPED.with(|s| s.set(Some(l)));
        f()
    })
}

/// Runs `f` on a thread of the rayon pool (directly when already on one). A pool thread that
/// starts a parallel loop works on it itself and only wakes the other threads; a thread
/// outside the pool hands every loop over and sleeps until it ends, two context switches
/// for each of the few hundred products a decoded token makes. Model entry points call
/// this once, so the hand-over happens once per forward pass.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// Call first thing in `main` (before any thread starts): hands Candle's parallel loops to
/// the one rayon pool.
///
/// Candle keeps a pool of its own (a thread per extra core) for its element-wise ops and
/// quantized matmuls, whose threads spin while they wait, next to the rayon pool every
/// matmul here runs on. On two cores the two pools took turns badly: the caller spun waiting
/// for a Candle thread that a rayon thread had displaced (a sixth of a LoRA step's time, and
/// 27% longer steps, measured with other work on the machine). With `CANDLE_NUM_THREADS=1`
/// Candle's element-wise ops run on the calling thread (they are memory-bound), and the
/// quantized products it would have split go through `quant` instead. A value the user set
/// is kept.
pub fn init_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Every level this CPU can run, portable first.
pub fn available() -> Vec<Level> {
    let best = features().best();
    Level::ALL.into_iter().filter(|l| *l <= best).collect()
}

/// The CPU's model name and family/model numbers, from `/proc/cpuinfo` where there is one.
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    match (field("cpu family"), field("model")) {
        (Some(f), Some(m)) => format!("{name} (family {f} model {m})"),
        _ => name,
    }
}

/// One line for benchmarks: CPU, threads, the features found, and the kernel level in use.
pub fn cpu_line() -> String {
    let f = features();
    let yn = |b: bool| if b { "yes" } else { "no" };
    format!(
        "cpu: {} | threads {} | avx2 {} fma {} avx512f {} avx512-vnni {} avx512-bf16 {} amx-bf16 {} | kernels: {}{}",
        cpu_model(),
        rayon::current_num_threads(),
        yn(f.avx2),
        yn(f.fma),
        yn(f.avx512f),
        yn(f.avx512vnni),
        yn(f.avx512bf16),
        yn(f.amx_bf16),
        level().name(),
        match std::env::var(ENV) {
            Ok(v) => format!(" ({ENV}={v})"),
            Err(_) => String::new(),
        }
    )
}

/// The mask of the first `n` of 16 lanes (all of them from 16 on).
#[cfg(target_arch = "x86_64")]
pub(crate) fn mask16(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        for l in Level::ALL {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
        assert_eq!(Level::parse("avx1024"), None);
        assert!(Level::Portable < Level::Avx2 && Level::Avx512 < Level::Avx512Bf16);
    }

    #[test]
    fn scoped_level_is_capped_and_restored() {
        let outer = level();
        with_level(Level::Portable, || {
            assert_eq!(level(), Level::Portable);
            // a scope never lifts the level above what the CPU has
            with_level(Level::Avx512Bf16, || assert!(level() <= features().best()));
            assert_eq!(level(), Level::Portable);
        });
        assert_eq!(level(), outer);
        assert_eq!(available()[0], Level::Portable);
        assert_eq!(*available().last().unwrap(), features().best());
    }

    #[test]
    fn best_level_follows_features() {
        let mut f = Features::default();
        assert_eq!(f.best(), Level::Portable);
        f.avx2 = true;
        assert_eq!(f.best(), Level::Portable, "AVX2 without FMA");
        f.fma = true;
        assert_eq!(f.best(), Level::Avx2);
        f.avx512f = true;
        f.avx512bw = true;
        assert_eq!(f.best(), Level::Avx512);
        f.avx512bf16 = true;
        assert_eq!(f.best(), Level::Avx512Bf16);
        f.amx_bf16 = true;
        assert_eq!(f.best(), Level::Avx512Bf16, "AMX is reported, not used");
    }

    #[test]
    fn cpu_line_names_features_and_level() {
        let l = cpu_line();
        assert!(l.starts_with("cpu: ") && l.contains("avx512-bf16 ") && l.contains("amx-bf16 "));
        assert!(l.contains(&format!("kernels: {}", level().name())));
    }
}
