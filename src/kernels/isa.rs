//! Which micro-kernel family runs: detected once, at pack time, or forced for tests and benchmarks.

use std::sync::OnceLock;

/// An instruction-set path of the dense kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 AVX-512F: 16-lane vectors, 32 registers.
    Avx512,
    /// x86-64 AVX2 with FMA: 8-lane vectors, 16 registers.
    Avx2,
    /// `wide::f32x8`, whose instructions are fixed at compile time; runs on every target.
    Portable,
}

/// The environment variable that forces a path when [`KernelChoice::Auto`] is used:
/// `avx512`, `avx2` or `portable`. An unknown or unsupported value is ignored (the best supported
/// path runs), so that a forced setting can never make a binary crash on another machine.
pub const KERNEL_ENV: &str = "BNFOLD_KERNEL";

impl Isa {
    /// Every path, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// Whether this CPU can run the path (runtime detection; the portable path always can).
    pub fn is_supported(self) -> bool {
        super::arch::is_supported(self)
    }

    /// The paths this CPU supports, best first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The best supported path.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|i| i.is_supported())
            .unwrap_or(Isa::Portable)
    }

    /// The name used by [`KERNEL_ENV`] and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Parse a name as printed by [`Isa::name`] (case-insensitive).
    pub fn from_name(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a kernel picks its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// [`KERNEL_ENV`] if it names a supported path, else the best supported one.
    #[default]
    Auto,
    /// This path if the CPU supports it, else the best supported one (see [`KernelChoice::resolve`]).
    Force(Isa),
}

impl KernelChoice {
    /// The path that runs on this machine.
    pub fn resolve(self) -> Isa {
        match self {
            KernelChoice::Force(i) if i.is_supported() => i,
            KernelChoice::Force(_) => Isa::best(),
            KernelChoice::Auto => auto(),
        }
    }
}

/// The `Auto` choice, read once per process.
fn auto() -> Isa {
    static AUTO: OnceLock<Isa> = OnceLock::new();
    *AUTO.get_or_init(|| {
        std::env::var(KERNEL_ENV)
            .ok()
            .and_then(|v| Isa::from_name(&v))
            .filter(|i| i.is_supported())
            .unwrap_or_else(Isa::best)
    })
}
