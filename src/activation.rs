//! The activation functions: every variant, its file code, its name and its exact definition, in
//! one place.
//!
//! Adding an activation means: a variant here (and in [`Activation::ALL`], `code`, `from_code`,
//! `name`, [`Activation::eval_f64`]), its f32 kernel in `kernels/activation.rs`, and a line in
//! `docs/FORMAT.md`. Everything else (the CLI's parser, the test and fuzz generators, the f64
//! reference) reads this module. `docs/ARCHITECTURE.md` has the list.

use std::fmt;
use std::str::FromStr;

/// An activation function, as stored in an activation layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `x`.
    Identity,
    /// `max(x, 0)`, with NaN propagated.
    Relu,
    /// `x` for `x >= 0`, `alpha * x` otherwise.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// Hyperbolic tangent.
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `x * Phi(x)` with the exact normal CDF, `0.5 * x * (1 + erf(x / sqrt 2))` (PyTorch's default).
    GeluErf,
    /// The tanh approximation `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// Softmax over the features of each row; only allowed as the last layer.
    Softmax,
}

/// The slope a bare `leaky_relu` gets (PyTorch's `negative_slope` default).
pub const DEFAULT_LEAKY_SLOPE: f32 = 0.01;

impl Activation {
    /// Every activation, in file-code order (`ALL[a.code() as usize] == a` up to the leaky
    /// slope, which is [`DEFAULT_LEAKY_SLOPE`] here). Generators pick from this list
    /// (`ALL[byte as usize % ALL.len()]`), so a new variant reaches them without an edit.
    pub const ALL: [Activation; 8] = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu {
            alpha: DEFAULT_LEAKY_SLOPE,
        },
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::GeluErf,
        Activation::GeluTanh,
        Activation::Softmax,
    ];

    /// The code stored in the file.
    pub fn code(self) -> u8 {
        match self {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::LeakyRelu { .. } => 2,
            Activation::Tanh => 3,
            Activation::Sigmoid => 4,
            Activation::GeluErf => 5,
            Activation::GeluTanh => 6,
            Activation::Softmax => 7,
        }
    }

    /// The parameter stored beside the code (the leaky slope, 0 for the others).
    pub fn param(self) -> f32 {
        match self {
            Activation::LeakyRelu { alpha } => alpha,
            _ => 0.0,
        }
    }

    /// Decode a code and its parameter; `None` for an unknown code.
    pub fn from_code(code: u8, param: f32) -> Option<Self> {
        match Activation::ALL.get(usize::from(code))? {
            Activation::LeakyRelu { .. } => Some(Activation::LeakyRelu { alpha: param }),
            &a => Some(a),
        }
    }

    /// Name as used by the CLI and the spec (without the leaky slope; [`fmt::Display`] adds it).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::GeluErf => "gelu_erf",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Softmax => "softmax",
        }
    }

    /// Whether the activation acts on each value alone (every one but softmax, which is row-wise).
    pub fn is_elementwise(self) -> bool {
        !matches!(self, Activation::Softmax)
    }

    /// The definition, in f64: what every f32 kernel is measured against. Softmax is row-wise
    /// and returns `x` here (see [`crate::reference`] for the row-wise form).
    ///
    /// NaN propagates through every function (as in PyTorch): ReLU is written as a comparison,
    /// not `max`, which would turn NaN into 0. Infinities give the limits: `tanh(+-inf) = +-1`,
    /// `sigmoid(-inf) = 0`, `sigmoid(+inf) = 1`, `gelu(+inf) = +inf` and `gelu(-inf) = -0` (the
    /// GELU formulas would give `-inf * 0 = NaN` there, so that point is stated explicitly).
    pub fn eval_f64(self, x: f64) -> f64 {
        match self {
            Activation::Identity | Activation::Softmax => x,
            Activation::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    f64::from(alpha) * x
                } else {
                    x
                }
            }
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            // At -inf the formulas give -inf * 0 = NaN; the function's limit there is -0.
            Activation::GeluErf | Activation::GeluTanh if x == f64::NEG_INFINITY => -0.0,
            Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
        }
    }
}

impl fmt::Display for Activation {
    /// The name, and for leaky ReLU the slope: `leaky_relu:0.2`. [`FromStr`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::LeakyRelu { alpha } => write!(f, "leaky_relu:{alpha}"),
            a => f.write_str(a.name()),
        }
    }
}

/// Why a string does not name an activation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown activation '{0}' (expected one of: {list})", list = names())]
pub struct ParseActivationError(String);

/// The accepted names, for messages: `identity, relu, leaky_relu[:ALPHA], ...`.
fn names() -> String {
    Activation::ALL
        .iter()
        .map(|a| match a {
            Activation::LeakyRelu { .. } => "leaky_relu[:ALPHA]".to_owned(),
            a => a.name().to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Activation {
    type Err = ParseActivationError;

    /// A name as [`Activation::name`] prints it, case-insensitive; `leaky_relu:ALPHA` sets the
    /// slope (a finite number; bare `leaky_relu` is [`DEFAULT_LEAKY_SLOPE`]); `gelu` is accepted
    /// for `gelu_erf` (PyTorch's `nn.GELU()` default).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseActivationError(s.to_owned());
        let t = s.trim().to_ascii_lowercase();
        let (name, param) = match t.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (t.as_str(), None),
        };
        let name = if name == "gelu" { "gelu_erf" } else { name };
        let a = *Activation::ALL
            .iter()
            .find(|a| a.name() == name)
            .ok_or_else(err)?;
        match (a, param) {
            (Activation::LeakyRelu { .. }, Some(p)) => {
                let alpha: f32 = p.trim().parse().map_err(|_| err())?;
                if !alpha.is_finite() {
                    return Err(err());
                }
                Ok(Activation::LeakyRelu { alpha })
            }
            (_, Some(_)) => Err(err()),
            (a, None) => Ok(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_code_order_and_codes_round_trip() {
        for (i, a) in Activation::ALL.iter().enumerate() {
            assert_eq!(usize::from(a.code()), i, "{a}");
            assert_eq!(Activation::from_code(a.code(), a.param()), Some(*a));
        }
        assert_eq!(
            Activation::from_code(Activation::ALL.len() as u8, 0.0),
            None
        );
    }

    #[test]
    fn display_and_from_str_round_trip() {
        for a in Activation::ALL
            .into_iter()
            .chain([Activation::LeakyRelu { alpha: 0.2 }])
        {
            assert_eq!(a.to_string().parse::<Activation>(), Ok(a));
        }
        assert_eq!("GELU".parse::<Activation>(), Ok(Activation::GeluErf));
        assert_eq!(
            "leaky_relu".parse::<Activation>(),
            Ok(Activation::LeakyRelu { alpha: 0.01 })
        );
        for bad in ["", "swish", "relu:1", "leaky_relu:x", "leaky_relu:inf"] {
            let e = bad.parse::<Activation>().unwrap_err();
            assert!(e.to_string().contains("leaky_relu[:ALPHA]"), "{e}");
        }
    }
}
