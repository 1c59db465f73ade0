//! Narrow dense layers (fewer output features than a vector has lanes) in their stored row layout.
//!
//! The panel layout of `gemm.rs` puts output features along the vector lanes, so a layer with
//! `n < LANES` outputs would be padded to a whole panel: `LANES / n` times its f32 size (16x for
//! `Dense(k -> 1)` on AVX-512). Here the weights stay `[n, k]` row-major (exactly their f32 size,
//! plus the bias), and each output is a dot product along `k`, vectorised over `k`: for each input
//! row, blocks of up to [`OUTS`] outputs share every load of the input. Sums run in a fixed order
//! (lane-wise along `k`, then the lanes in index order), whatever the thread count.

use super::EpilogueOp;
use super::simd::{Simd, lanes};

/// Outputs computed together: their weight vectors are loaded once for a block of rows (see
/// [`rows`]), and the block's accumulators, weights and input vector stay in registers (at most
/// 8 + 4 + 1 of 16 on AVX2).
pub(crate) const OUTS: usize = 4;

/// A narrow layer's weights `[n, k]` row-major and its bias.
#[derive(Debug, Clone)]
pub(crate) struct Rows {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) w: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}

impl Rows {
    /// No rows yet, room for `n` rows of `k` weights ([`Rows::push_row`] fills them in order).
    pub(crate) fn empty(n: usize, k: usize) -> Rows {
        Rows {
            k,
            n,
            w: Vec::with_capacity(n.saturating_mul(k)),
            bias: Vec::with_capacity(n),
        }
    }

    /// Append the next output's `k` weights and its bias.
    pub(crate) fn push_row(&mut self, row: &[f32], bias: f32) {
        self.w.extend_from_slice(row);
        self.bias.push(bias);
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        (self.w.len() + self.bias.len()) * 4
    }
}

/// Arguments of one call of a row kernel: rows `rows` of `x` (`[batch, k]`) into `y`, bias
/// added, no epilogue.
pub(crate) struct RowArgs<'a> {
    pub(crate) w: &'a Rows,
    /// The whole input, row `r` at `x + r * k`.
    pub(crate) x: *const f32,
    /// The output rows `rows` only: row `r` at `y + (r - rows.start) * n`.
    pub(crate) y: *mut f32,
    pub(crate) rows: std::ops::Range<usize>,
}

/// A row-kernel entry point for one ISA.
///
/// # Safety
/// The CPU supports the ISA; `x` is valid for `rows.end * k` reads and `y` for `rows.len() * n`
/// writes that no other thread touches.
pub(crate) type RowFn = unsafe fn(&RowArgs<'_>);

/// The body of every ISA's row kernel: the rows in blocks that share each weight load (8 rows
/// for one output, 4 for two, 2 for three or four: at most 8 accumulators), the rows left over
/// one at a time, each block for every group of up to [`OUTS`] outputs.
///
/// # Safety
/// As [`RowFn`], with `V` the ISA's vector type.
#[inline(always)]
pub(crate) unsafe fn rows<V: Simd>(t: &RowArgs<'_>) {
    let n = t.w.n;
    // SAFETY: the function contract; outputs `o0 .. o0 + m` are inside `n`.
    unsafe {
        let mut o0 = 0;
        while o0 < n {
            let m = OUTS.min(n - o0);
            // Direct calls (not function pointers), so that every block is inlined into the
            // ISA's `#[target_feature]` entry point and compiled with its features.
            match m {
                1 => blocks::<V, 8, 1>(t, o0),
                2 => blocks::<V, 4, 2>(t, o0),
                3 => blocks::<V, 2, 3>(t, o0),
                _ => blocks::<V, 2, 4>(t, o0),
            }
            o0 += m;
        }
    }
}

/// Outputs `o0 .. o0 + M` of every row: blocks of `RB` rows, then the rows left one at a time.
///
/// # Safety
/// As [`RowFn`]; outputs `o0 .. o0 + M` are inside `n`.
#[inline(always)]
unsafe fn blocks<V: Simd, const RB: usize, const M: usize>(t: &RowArgs<'_>, o0: usize) {
    let mut r = t.rows.start;
    // SAFETY: the function contract; each block's rows are inside `t.rows`.
    unsafe {
        while r + RB <= t.rows.end {
            block::<V, RB, M>(t, r, o0);
            r += RB;
        }
        while r < t.rows.end {
            block::<V, 1, M>(t, r, o0);
            r += 1;
        }
    }
}

/// Rows `r .. r + RB` of the input times weight rows `o0 .. o0 + M`, plus the bias, into `y`.
/// Each dot product runs lane-wise along `k` (whole vectors, then the partial one), then adds its
/// lanes in index order from 0.0: the same sums, in the same order, for any `RB`; the `RB * M`
/// horizontal sums are interleaved so that their dependency chains overlap.
///
/// # Safety
/// As [`RowFn`]; rows `r .. r + RB` are inside `t.rows` and outputs `o0 .. o0 + M` inside `n`.
#[inline(always)]
unsafe fn block<V: Simd, const RB: usize, const M: usize>(t: &RowArgs<'_>, r: usize, o0: usize) {
    let (k, n, l) = (t.w.k, t.w.n, V::LANES);
    let full = k / l * l;
    // SAFETY: the function contract; every pointer below is inside rows `r .. r + RB` of `x`
    // (`k` values each), weight rows `o0 .. o0 + M` (`k` values each), or the output rows.
    unsafe {
        let w0 = t.w.w.as_ptr().add(o0 * k);
        let x0 = t.x.add(r * k);
        let mut acc = [[V::zero(); M]; RB];
        let mut kk = 0;
        while kk < full {
            let mut wv = [V::zero(); M];
            for (j, w) in wv.iter_mut().enumerate() {
                *w = V::load(w0.add(j * k + kk));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = V::load(x0.add(i * k + kk));
                for (a, &w) in a.iter_mut().zip(&wv) {
                    *a = V::fma(w, xv, *a);
                }
            }
            kk += l;
        }
        if full < k {
            let mut wv = [V::zero(); M];
            for (j, w) in wv.iter_mut().enumerate() {
                *w = V::load_partial(w0.add(j * k + full), k - full);
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = V::load_partial(x0.add(i * k + full), k - full);
                for (a, &w) in a.iter_mut().zip(&wv) {
                    *a = V::fma(w, xv, *a);
                }
            }
        }
        let mut parts = [[[0.0f32; 16]; M]; RB];
        for (p, a) in parts.iter_mut().zip(&acc) {
            for (p, &a) in p.iter_mut().zip(a) {
                *p = lanes(a);
            }
        }
        let mut sums = [[0.0f32; M]; RB];
        for q in 0..l {
            for (s, p) in sums.iter_mut().zip(&parts) {
                for (s, p) in s.iter_mut().zip(p) {
                    *s += p[q];
                }
            }
        }
        let y0 = t.y.add((r - t.rows.start) * n + o0);
        for (i, s) in sums.iter().enumerate() {
            for (j, &s) in s.iter().enumerate() {
                *y0.add(i * n + j) = s + t.w.bias[o0 + j];
            }
        }
    }
}

/// Whether a layer of `n` outputs takes the row layout on an ISA of `lanes` lanes: when a panel
/// would be less than half full. Every other layer takes panels, whose padding is then below 2x.
pub(crate) fn narrow(n: usize, lanes: usize) -> bool {
    2 * n < lanes
}

/// Apply the epilogue to rows `rows` of `y` (`[batch, n]`), after [`rows`] wrote them.
pub(crate) fn epilogue(y: &mut [f32], n: usize, ops: &[EpilogueOp]) {
    if !ops.is_empty() {
        for row in y.chunks_exact_mut(n) {
            super::apply_epilogue(ops, row, 0);
        }
    }
}
