//! The accuracy metric of the vector activations, shared by `tests/vmath.rs` and
//! `examples/vmath_sweep.rs`: each function, its useful range, its f64 reference, its regions,
//! and the error in f32 ulps.
//!
//! Error of `got` against the f64 reference `want`: `|got - want| / ulp(max(|want|, floor))`,
//! where `ulp(w)` is the spacing of f32 at `|w|` (2^-149 in the subnormal range, so subnormal
//! results are measured absolutely, as the format can hold them). `floor` is zero except for the
//! GELUs' negative tail, where the f64 definition itself is not relatively accurate (see
//! [`Func::floor`]).

#![allow(dead_code)]

use bnfold::Activation;

/// The functions measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Func {
    Exp,
    Tanh,
    Sigmoid,
    GeluErf,
    GeluTanh,
}

impl Func {
    pub const ALL: [Func; 5] = [
        Func::Exp,
        Func::Tanh,
        Func::Sigmoid,
        Func::GeluErf,
        Func::GeluTanh,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Func::Exp => "exp",
            Func::Tanh => "tanh",
            Func::Sigmoid => "sigmoid",
            Func::GeluErf => "gelu_erf",
            Func::GeluTanh => "gelu_tanh",
        }
    }

    /// The activation it is (`None` for exp, which is softmax's).
    pub fn activation(self) -> Option<Activation> {
        match self {
            Func::Exp => None,
            Func::Tanh => Some(Activation::Tanh),
            Func::Sigmoid => Some(Activation::Sigmoid),
            Func::GeluErf => Some(Activation::GeluErf),
            Func::GeluTanh => Some(Activation::GeluTanh),
        }
    }

    /// The useful range: exp from its first zero result to its overflow, sigmoid from its first
    /// zero result to 20 (1 in f32 from 16.7), tanh and the GELUs [-20, 20] (tanh is +-1 in f32
    /// beyond +-9.01; the GELUs are `x` or below 1e-80 in magnitude beyond).
    pub fn range(self) -> (f32, f32) {
        match self {
            Func::Exp => (-104.0, 89.0),
            Func::Sigmoid => (-104.0, 20.0),
            _ => (-20.0, 20.0),
        }
    }

    /// The f64 reference.
    pub fn reference(self, x: f32) -> f64 {
        match self.activation() {
            None => f64::from(x).exp(),
            Some(a) => a.eval_f64(f64::from(x)),
        }
    }

    /// Below this magnitude the error is measured in ulps of the floor (absolute), not of the
    /// result. Zero except for the GELUs at `x < 0`: there `GELU(x) = x Phi(x)` with `Phi`
    /// computed by the definition as `0.5 (1 + erf)` or `0.5 (1 + tanh)`, which in f64 has an
    /// absolute error near 2^-53 (the cancellation of `1 + (-1 + tiny)`), so for
    /// `Phi(x) < 2^-20` the reference is not accurate to an f32 ulp of the result. The floor,
    /// `2^-20 |x|`, measures the error there relative to the input's scale.
    pub fn floor(self, x: f32) -> f64 {
        match self {
            Func::GeluErf | Func::GeluTanh if x < 0.0 => f64::from(x).abs() * 2f64.powi(-20),
            _ => 0.0,
        }
    }
}

/// The spacing of f32 at magnitude `w` (2^-149 for subnormals and zero; 2^104 at and above
/// `f32::MAX`).
pub fn ulp(w: f64) -> f64 {
    let a = w.abs();
    if a < f64::from(f32::MIN_POSITIVE) {
        return 2f64.powi(-149);
    }
    if a >= f64::from(f32::MAX) {
        return 2f64.powi(104);
    }
    // The exponent of `a` as an f64 (exact, unlike log2).
    let e = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    2f64.powi(e - 23)
}

/// The error of `got` against `want`, in ulps of `max(|want|, floor)`; `None` for a special
/// value that does not match (NaN where the reference is a number or the reverse; a wrong
/// infinity). Infinite and NaN pairs that match count as 0.
pub fn err_ulps(got: f32, want: f64, floor: f64) -> Option<f64> {
    if want.is_nan() || got.is_nan() {
        return (want.is_nan() && got.is_nan()).then_some(0.0);
    }
    let want32 = want as f32;
    if want32.is_infinite() || got.is_infinite() {
        return (f64::from(got) == f64::from(want32)).then_some(0.0);
    }
    Some((f64::from(got) - want).abs() / ulp(want.abs().max(floor)))
}

/// The largest error seen in one region, and where.
#[derive(Debug, Clone, Default)]
pub struct Worst {
    pub ulps: f64,
    pub at: f32,
    pub got: f32,
    pub want: f64,
    pub count: u64,
    /// Inputs whose special value did not match, and the first of them.
    pub bad: u64,
    pub first_bad: Option<(f32, f32, f64)>,
}

impl Worst {
    pub fn record(&mut self, x: f32, got: f32, want: f64, floor: f64) {
        self.count += 1;
        match err_ulps(got, want, floor) {
            None => {
                self.bad += 1;
                self.first_bad.get_or_insert((x, got, want));
            }
            Some(e) if e > self.ulps => {
                *self = Worst {
                    ulps: e,
                    at: x,
                    got,
                    want,
                    ..std::mem::take(self)
                }
            }
            Some(_) => {}
        }
    }

    pub fn merge(&mut self, o: &Worst) {
        let (count, bad) = (self.count + o.count, self.bad + o.bad);
        let first_bad = self.first_bad.or(o.first_bad);
        if o.ulps > self.ulps {
            *self = o.clone();
        }
        self.count = count;
        self.bad = bad;
        self.first_bad = first_bad;
    }
}

impl std::fmt::Display for Worst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max {:.3} ulp at x = {:e} (got {:e}, want {:e}); {} inputs",
            self.ulps, self.at, self.got, self.want, self.count
        )?;
        if let Some((x, g, w)) = self.first_bad {
            write!(
                f,
                "; {} special mismatches, first x = {x:e}: {g} vs {w}",
                self.bad
            )?;
        }
        Ok(())
    }
}

/// The regions each function's error is reported by: (name, lower bound of x), ascending; a
/// region runs to the next one's bound.
pub fn region_bounds(f: Func) -> &'static [(&'static str, f32)] {
    match f {
        Func::Exp => &[
            ("x < -87.34 (subnormal results)", f32::NEG_INFINITY),
            ("-87.34 <= x < 0", -87.336_55),
            ("0 <= x <= 88.72", 0.0),
            ("x > 88.72 (overflow)", 88.722_84),
        ],
        Func::Tanh => &[
            ("x < -1", f32::NEG_INFINITY),
            ("-1 <= x < 1", -1.0),
            ("x >= 1", 1.0),
        ],
        Func::Sigmoid => &[
            ("x < -87.3 (subnormal results)", f32::NEG_INFINITY),
            ("-87.3 <= x < 0", -87.3),
            ("x >= 0", 0.0),
        ],
        Func::GeluErf | Func::GeluTanh => &[
            ("x < -5 (tail, floor 2^-20 |x|)", f32::NEG_INFINITY),
            ("-5 <= x < -1", -5.0),
            ("-1 <= x < 1", -1.0),
            ("x >= 1", 1.0),
        ],
    }
}

/// Empty accumulators, one per region, with their names.
pub fn regions(f: Func) -> Vec<(&'static str, Worst)> {
    region_bounds(f)
        .iter()
        .map(|&(n, _)| (n, Worst::default()))
        .collect()
}

/// The region `x` falls in.
pub fn region_of(f: Func, x: f32) -> usize {
    let b = region_bounds(f);
    b.iter().rposition(|&(_, lo)| x >= lo).unwrap_or(0)
}
