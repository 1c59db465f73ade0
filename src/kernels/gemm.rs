//! Packed weights, the register-tiled micro-kernel and the blocked driver around it.
//!
//! The product is `Y[batch, n] = X[batch, k] W^T` with `W` stored `[n, k]` (output features as
//! rows). The weights are the packed operand: output features run along the vector lanes, the
//! batch is the broadcast dimension. A tile of `MV` vectors (`MV * LANES` features) by `NR` batch
//! rows lives in `MV * NR` accumulator registers; each step of `k` loads `MV` weight vectors and
//! broadcasts `NR` inputs. Because features are along the lanes, the per-feature epilogue (bias,
//! affine, BN) costs one vector load per vector of the tile, and rows of `Y` are stored
//! contiguously.
//!
//! Two drivers share the micro-kernel:
//! - the *unpacked* path (see [`unpacked_path`]: batches up to [`SMALL_BATCH`], layers whose
//!   weights fit L2, products whose inputs fit L3): no blocking and no packing of `X`; rows are
//!   taken in chunks of up to 8 and each chunk streams the packed weights once, with tiles shaped
//!   for 1, 2, 4 or 8 rows (tract's kernel families, by batch size);
//! - the *blocked* path: the BLIS loops (`NC` rows of `X`, `KC` of depth, `MC` features, then the
//!   `NR` x `MV*LANES` micro-tiles), with `X` packed per `KC x NC` block into `NR`-row micro-panels
//!   that stay in L1 while the L2-resident block of `W` (copied contiguous per `KC x MC` block)
//!   streams past them. `KC`, `MC` and `NC` are derived from the running processor's cache sizes
//!   when the layer is packed ([`Blocking`], `cache.rs`).

use super::EpilogueOp;
use super::cache::Blocking;
use super::elem::WeightElem;
use super::isa::Isa;
use super::simd::Simd;
use crate::activation::Activation;

/// Batches up to this size take the small-batch (streaming, unpacked) path.
pub(crate) const SMALL_BATCH: usize = 8;

/// Whether a product takes the unpacked path: batches up to [`SMALL_BATCH`], products whose
/// inputs fit a quarter of L3 ([`Blocking::unpacked_max_inputs`]), and layers whose weights fit
/// L2 ([`Blocking::unpacked_max_weights`]). The unpacked driver takes the weights in panel groups
/// of a quarter of L2 and runs every chunk of 8 rows over each group, reading the inputs straight
/// from the caller's rows; it saves the packing of `X` and the reloads of the output between
/// depth blocks, and pays one read of all the inputs per group.
///
/// Inputs: measured on the AVX-512 development machine (32 MiB L3), one thread, both drivers
/// back to back (GFLOP/s, unpacked vs blocked): 2048x2048 at batch 256: 226-228 vs 208-210;
/// 1024x1024 at 1024: 223-227 vs 197-201; 784x1024 at 64 and 1024: 224-236 vs 201-211;
/// 4096x4096 at 64 and 512: 211-221 vs 185-214; but 4096x4096 at 1024 and 2048 (16 and 32 MiB of
/// inputs, re-read per panel group): 193-217 vs 219-221, so those are blocked.
///
/// Weights: once the inputs outgrow the L3, re-reading them per group costs more than the
/// blocked driver's packing as soon as there are more than about four groups. Measured on the
/// AVX2 machine of `docs/PERFORMANCE.md` (8 MiB L3, 512 KiB L2, so 128 KiB groups), one thread,
/// ReLU epilogue, drivers alternating, 2-3 rounds (GFLOP/s, unpacked vs blocked): 1024x1024 at
/// batch 1024 29.9-31.3 vs 33.7-34.8 and at 1536 30.0-30.7 vs 34.4-34.5 (32 groups); 784x1024
/// at 1024 29.1-33.1 vs 33.2-34.6; 512x512 at 2048 30.9 vs 33.5 (8 groups); 362x362 at 8192
/// 32.1-32.7 vs 31.4-32.4 (4 groups); 256x256 at 8192 32.7-33.4 vs 32.6-32.7 (2); and within one
/// group 180x180 at 16384 31.8-31.9 vs 29.0-29.2, 1024x30 at 16384 30.7-31.2 vs 17.6-17.8. The
/// bound was half the L3 before (up to 1 Mi f32 weights there: the 1024x1024 rows above ran
/// unpacked); on the AVX-512 machine it moves 2048x2048 at batch 2048 (16 MiB of inputs) to the
/// blocked driver, measured there at 200-204 GFLOP/s blocked against 202-219 unpacked.
///
/// Decided from the whole problem (not from one task's share of it), so that the summation order
/// never depends on the thread count.
pub(crate) fn unpacked_path(b: &Blocking, batch: usize, k: usize, n: usize) -> bool {
    batch <= SMALL_BATCH
        || k.saturating_mul(n) <= b.unpacked_max_weights
        || batch.saturating_mul(k) <= b.unpacked_max_inputs
}

/// Put one feature's weights `row` into lane `l` of `panel` (one panel of `lanes` lanes), depth by
/// depth ([`WeightElem::index`]), converted to `W` a chunk at a time (f16 converts eight lanes per
/// instruction) and then scattered.
fn fill_lane<W: WeightElem>(panel: &mut [W], l: usize, lanes: usize, row: &[f32]) {
    const CHUNK: usize = 512;
    let mut staged = [W::zeroed(); CHUNK];
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        let staged = &mut staged[..chunk.len()];
        W::from_f32_slice(chunk, staged);
        for (i, &w) in staged.iter().enumerate() {
            panel[W::index(c * CHUNK + i, l, lanes)] = w;
        }
    }
}

/// Memory of packed weights (elements `W`): large blocks are anonymous mappings advised to use
/// transparent huge pages (on Linux), so that streaming many panels side by side does not walk a
/// 4 KiB page table entry every 4 KiB of each stream; small ones are plain heap vectors.
#[derive(Debug)]
enum Store<W> {
    Heap(Vec<W>),
    Mapped(memmap2::MmapMut),
}

/// Weights of at least this many bytes (one huge page) get a mapping of their own.
const MAPPED_MIN_BYTES: usize = 2 << 20;

impl<W: WeightElem> Store<W> {
    /// `len` zeros.
    fn zeroed(len: usize) -> Store<W> {
        if let Some(bytes) = len
            .checked_mul(size_of::<W>())
            .filter(|&b| b >= MAPPED_MIN_BYTES)
            && let Ok(m) = memmap2::MmapMut::map_anon(bytes)
        {
            // Only a hint: without huge pages the mapping works the same.
            #[cfg(target_os = "linux")]
            let _ = m.advise(memmap2::Advice::HugePage);
            // Mappings are page-aligned, so the typed view cannot fail; checked anyway.
            if bytemuck::try_cast_slice::<u8, W>(&m[..]).is_ok() {
                return Store::Mapped(m);
            }
        }
        Store::Heap(vec![W::zeroed(); len])
    }

    fn as_slice(&self) -> &[W] {
        match self {
            Store::Heap(v) => v,
            // Cannot panic: `zeroed` checked the alignment and the length is a multiple of the
            // element size.
            Store::Mapped(m) => bytemuck::cast_slice(&m[..]),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [W] {
        match self {
            Store::Heap(v) => v,
            // As in `as_slice`.
            Store::Mapped(m) => bytemuck::cast_slice_mut(&mut m[..]),
        }
    }
}

impl<W: WeightElem> Clone for Packed<W> {
    /// A copy with its own storage, its panels again on a 64-byte boundary.
    fn clone(&self) -> Packed<W> {
        let src = self.data.as_slice();
        let line = line_of::<W>();
        let len = src.len() - line;
        let mut data = Store::<W>::zeroed(src.len());
        let offset = data.as_slice().as_ptr().align_offset(64).min(line);
        data.as_mut_slice()[offset..offset + len]
            .copy_from_slice(&src[self.offset..self.offset + len]);
        Packed {
            data,
            offset,
            bias: self.bias.clone(),
            ..*self
        }
    }
}

/// Elements of `W` in one 64-byte cache line.
const fn line_of<W>() -> usize {
    64 / size_of::<W>()
}

/// Weights packed into panels of `lanes` features: panel `p` holds features `p*lanes ..`, as `k`
/// groups of `lanes` contiguous values (zero-padded past `n`), stored as `W` (f32, f16 or bf16;
/// widened to f32 in registers by the micro-kernel). bf16 panels pair the depths: each feature's
/// two bf16 of depths `2m` and `2m + 1` share a 32-bit word ([`WeightElem::index`]), so that one
/// `and` or one shift widens a vector. Packed once, when a plan is compiled.
#[derive(Debug)]
pub(crate) struct Packed<W: WeightElem> {
    pub(crate) lanes: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) panels: usize,
    /// Elements from one panel to the next: `k * lanes` rounded up to a cache line (64 bytes),
    /// plus one cache line, so that the panels a tile reads side by side do not fall into the
    /// same L1 set (with `k * lanes * size_of::<W>()` a multiple of 4 KiB they all would, and the
    /// prefetched lines of the streams would evict each other).
    pub(crate) stride: usize,
    /// `panels * stride` values starting at `offset` (64-byte aligned).
    data: Store<W>,
    offset: usize,
    /// `panels * lanes` values, zero-padded (f32 whatever `W` is).
    pub(crate) bias: Vec<f32>,
}

impl<W: WeightElem> Packed<W> {
    /// `n` features of depth `k`, every weight and bias zero, to be filled with
    /// [`Packed::set_row`]. The storage is allocated (zero pages of an anonymous mapping for
    /// large layers, which become resident as they are written).
    pub(crate) fn zeroed(n: usize, k: usize, lanes: usize) -> Packed<W> {
        let panels = n.div_ceil(lanes);
        let line = line_of::<W>();
        let stride = (k * lanes).div_ceil(line) * line + line;
        let len = panels * stride;
        // One spare line so that the panels can start on a 64-byte boundary.
        let data = Store::<W>::zeroed(len + line);
        let offset = data.as_slice().as_ptr().align_offset(64).min(line);
        Packed {
            lanes,
            k,
            n,
            panels,
            stride,
            data,
            offset,
            bias: vec![0.0f32; panels * lanes],
        }
    }

    /// Put feature `o`'s weights (`k` values, converted to `W` by [`WeightElem::from_f32`]: exact
    /// for weights already rounded to `W`) and its bias in their places: lane `o % lanes` of panel
    /// `o / lanes`, depth by depth ([`WeightElem::index`]). Panics if `o` is not below `n` or `row`
    /// is not `k` long.
    pub(crate) fn set_row(&mut self, o: usize, row: &[f32], bias: f32) {
        assert!(
            o < self.n && row.len() == self.k,
            "row {o} of {} x {}",
            self.n,
            self.k
        );
        let (lanes, stride) = (self.lanes, self.stride);
        let (p, l) = (o / lanes, o % lanes);
        let start = self.offset + p * stride;
        fill_lane(
            &mut self.data.as_mut_slice()[start..start + stride],
            l,
            lanes,
            row,
        );
        self.bias[o] = bias;
    }

    /// [`Packed::set_row`] for features `first..first + biases.len()`, `rows` holding their
    /// weights row-major. When `first` starts a panel and `rows` holds at least
    /// [`super::PARALLEL_MIN_MACS`] weights, the panels are filled in parallel on the current
    /// rayon pool (each task owns whole panels: disjoint slices); else row by row, without asking
    /// rayon anything. The same bytes either way. Panics as `set_row` does.
    pub(crate) fn set_rows(&mut self, first: usize, rows: &[f32], biases: &[f32]) {
        use rayon::prelude::*;
        let (k, lanes, stride, n) = (self.k, self.lanes, self.stride, biases.len());
        assert!(
            first + n <= self.n && rows.len() == n * k,
            "rows {first}.. ({n}) of {} x {k}",
            self.n
        );
        if k == 0 || !first.is_multiple_of(lanes) || rows.len() < super::PARALLEL_MIN_MACS {
            for (i, &b) in biases.iter().enumerate() {
                self.set_row(first + i, &rows[i * k..(i + 1) * k], b);
            }
            return;
        }
        // Panels `first / lanes ..` up to the one holding the last row: inside the panels, as
        // `first + n <= self.n`.
        let start = self.offset + first / lanes * stride;
        let data = &mut self.data.as_mut_slice()[start..start + n.div_ceil(lanes) * stride];
        data.par_chunks_mut(stride)
            .zip(rows.par_chunks(lanes * k))
            .with_min_len((super::COMPILE_TASK_WEIGHTS / (lanes * k)).max(1))
            .for_each(|(panel, panel_rows)| {
                for (l, row) in panel_rows.chunks(k).enumerate() {
                    fill_lane(panel, l, lanes, row);
                }
            });
        self.bias[first..first + n].copy_from_slice(biases);
    }

    /// The packed panels (padding included, without the alignment offset) and the padded bias,
    /// as bytes: what two packings must share to compute the same bits.
    pub(crate) fn layout_bytes(&self) -> (&[u8], &[u8]) {
        let len = self.panels * self.stride;
        (
            bytemuck::cast_slice(&self.data.as_slice()[self.offset..self.offset + len]),
            bytemuck::cast_slice(&self.bias[..]),
        )
    }

    /// Bytes held (padded weights and bias).
    pub(crate) fn bytes(&self) -> usize {
        size_of_val(self.data.as_slice()) + size_of_val(&self.bias[..])
    }

    /// Start of panel `p` at depth `kk` (even if the layout pairs depths).
    fn panel_ptr(&self, p: usize, kk: usize) -> *const W {
        debug_assert!(p < self.panels.max(1) && kk <= self.k);
        debug_assert!(!W::PAIRED || kk.is_multiple_of(2));
        // In bounds: `offset + p*stride + kk*lanes <= offset + len`.
        self.data.as_slice()[self.offset..]
            .as_ptr()
            .wrapping_add(p * self.stride + kk * self.lanes)
    }
}

/// What the micro-kernel applies to a finished tile (the last depth block only).
pub(crate) struct Epi<'a> {
    /// Padded bias, at the tile's first feature.
    bias: *const f32,
    /// First feature of the tile (indexes the per-feature vectors of `ops`).
    col0: usize,
    /// The leading ops that run in registers; the rest run on the stored tile.
    ops: &'a [EpilogueOp],
}

/// Arguments of one micro-tile, over weights stored as `W`.
pub(crate) struct TileArgs<'a, W> {
    /// Depth of this block.
    kc: usize,
    /// First weight panel of the tile, at this block's depth; the next is `a_stride` elements
    /// further.
    a: *const W,
    a_stride: usize,
    /// Inputs: packed (`x[kk * NR + r]`) or rows (`x + r * x_rs + kk`).
    x: *const f32,
    x_rs: usize,
    /// Valid batch rows in the tile (`1..=NR`); the others are computed from padding or a
    /// duplicated row and never stored.
    rows: usize,
    /// Output tile: row `r`, vector `v` at `c + r * ldc + v * LANES`.
    c: *mut f32,
    ldc: usize,
    /// Valid lanes of the tile's last vector (`LANES` unless it ends the matrix).
    lanes_last: usize,
    /// Add the tile to what `c` holds (depth blocks after the first).
    accumulate: bool,
    /// Bias and register epilogue (last depth block only).
    epi: Option<Epi<'a>>,
}

/// A micro-tile entry point for one ISA, tile shape and weight type.
///
/// # Safety
/// The CPU supports the ISA, and the pointers in the arguments are valid for the tile's shape.
pub(crate) type TileFn<W> = unsafe fn(&TileArgs<'_, W>);

/// Whether `op` can be applied to a vector of the tile in registers.
fn in_registers(op: &EpilogueOp) -> bool {
    match op {
        // Every elementwise activation has a vector form (`vmath`); softmax is row-wise.
        EpilogueOp::Act(a) => a.is_elementwise(),
        EpilogueOp::Affine { .. } | EpilogueOp::BatchNorm { .. } => true,
    }
}

/// How many leading ops of `ops` run in registers.
pub(crate) fn register_prefix(ops: &[EpilogueOp]) -> usize {
    ops.iter().take_while(|o| in_registers(o)).count()
}

/// Load `n` per-feature values at `p` (full vector if `n == LANES`).
///
/// # Safety
/// The CPU supports `V`; `p` is valid for `n` reads.
#[inline(always)]
unsafe fn load_n<V: Simd>(p: *const f32, n: usize) -> V {
    // SAFETY: forwarded contract.
    unsafe {
        if n == V::LANES {
            V::load(p)
        } else {
            V::load_partial(p, n)
        }
    }
}

/// Apply one register op to the tile `acc` (`MV` vectors of features from `col0`, `NR` rows; the
/// last vector has `n_last` valid lanes). Per-feature vectors are loaded once per vector of
/// features. Padding rows and lanes are computed too (from duplicated rows, zero weights and
/// bias, and a denominator of 1) and never stored.
///
/// Transcendental activations go through [`Simd::act_tile`], one out-of-line call per tile: inlined
/// here, their bodies (and their dozens of constants, hoisted to the top of every tile) slowed the
/// ReLU tiles of a 30-wide layer by 17%.
///
/// # Safety
/// The CPU supports `V`; `col0 + (MV - 1) * LANES + n_last <= len` of every per-feature vector in
/// `op` (guaranteed by the caller's shape checks).
#[inline(always)]
unsafe fn epilogue_op<V: Simd, const MV: usize, const NR: usize>(
    acc: &mut [[V; NR]; MV],
    op: &EpilogueOp,
    col0: usize,
    n_last: usize,
) {
    let l = V::LANES;
    let n_of = |v: usize| if v + 1 == MV { n_last } else { l };
    // SAFETY: per-feature vectors hold `col0 + (MV - 1) * l + n_last` values (function contract).
    unsafe {
        match op {
            EpilogueOp::Act(Activation::Identity | Activation::Softmax) => {}
            EpilogueOp::Act(Activation::Relu) => {
                for accv in acc.iter_mut() {
                    for x in accv.iter_mut() {
                        *x = x.relu();
                    }
                }
            }
            EpilogueOp::Act(Activation::LeakyRelu { alpha }) => {
                let a = V::splat(*alpha);
                for accv in acc.iter_mut() {
                    for x in accv.iter_mut() {
                        *x = x.where_negative_mul(a);
                    }
                }
            }
            EpilogueOp::Act(a) => {
                // A copy, so that the accumulators themselves never have their address taken
                // (which would keep them in memory through the whole product loop).
                let mut tile = *acc;
                V::act_tile(*a, tile.as_flattened_mut());
                *acc = tile;
            }
            EpilogueOp::Affine { scale, shift } => {
                for (v, accv) in acc.iter_mut().enumerate() {
                    let col = col0 + v * l;
                    let sc = load_n::<V>(scale.as_ptr().add(col), n_of(v));
                    let sh = load_n::<V>(shift.as_ptr().add(col), n_of(v));
                    for x in accv.iter_mut() {
                        *x = V::fma(sc, *x, sh);
                    }
                }
            }
            EpilogueOp::BatchNorm {
                gamma,
                beta,
                mean,
                denom,
            } => {
                for (v, accv) in acc.iter_mut().enumerate() {
                    let (col, n) = (col0 + v * l, n_of(v));
                    let g = load_n::<V>(gamma.as_ptr().add(col), n);
                    let m = load_n::<V>(mean.as_ptr().add(col), n);
                    // Padding lanes divide by 1, not 0, to keep them finite (they are not stored).
                    let d = if n == l {
                        V::load(denom.as_ptr().add(col))
                    } else {
                        let mut buf = [1.0f32; 16];
                        std::ptr::copy_nonoverlapping(denom.as_ptr().add(col), buf.as_mut_ptr(), n);
                        V::load(buf.as_ptr())
                    };
                    let b = load_n::<V>(beta.as_ptr().add(col), n);
                    for x in accv.iter_mut() {
                        // As in `EpilogueOp::apply`: gamma * (x - mean) / denom + beta, unfused.
                        *x = V::add(V::div(V::mul(g, V::sub(*x, m)), d), b);
                    }
                }
            }
        }
    }
}

/// One depth of the micro-kernel: the weight vectors of `MV` panels at the depth pair `a`
/// (`ODD`: its second depth) times the `NR` inputs of that depth (packed: at `x`; rows: at
/// `xr[r]`, both at the pair's first depth), into `acc`.
///
/// # Safety
/// As [`micro`], for the depth read.
#[inline(always)]
unsafe fn depth_step<
    V: Simd,
    W: WeightElem,
    const MV: usize,
    const NR: usize,
    const PACKED: bool,
    const ODD: bool,
>(
    acc: &mut [[V; NR]; MV],
    a: *const W,
    a_stride: usize,
    x: *const f32,
    xr: &[*const f32; NR],
) {
    let d = usize::from(ODD);
    // SAFETY: the function contract: `MV` panels at `a` with this depth pair inside them, and
    // the inputs of this depth.
    unsafe {
        let mut w = [V::zero(); MV];
        for (v, wv) in w.iter_mut().enumerate() {
            *wv = W::load::<V, ODD>(a.add(v * a_stride));
        }
        for r in 0..NR {
            let b = if PACKED {
                V::broadcast(x.add(d * NR + r))
            } else {
                V::broadcast(xr[r].add(d))
            };
            for v in 0..MV {
                acc[v][r] = V::fma(w[v], b, acc[v][r]);
            }
        }
    }
}

/// Two depths of the micro-kernel, weight vector by weight vector: both depths' inputs broadcast
/// first (`2 * NR` registers), then for each of the `MV` panels the pair of weight vectors at `a`
/// ([`WeightElem::load_pair`]) into its `NR` accumulators, depth `kk` then `kk + 1` (the same
/// sums, in the same order, as two [`depth_step`]s).
///
/// # Safety
/// As [`micro`], for the two depths read.
#[inline(always)]
unsafe fn pair_step<
    V: Simd,
    W: WeightElem,
    const MV: usize,
    const NR: usize,
    const PACKED: bool,
>(
    acc: &mut [[V; NR]; MV],
    a: *const W,
    a_stride: usize,
    x: *const f32,
    xr: &[*const f32; NR],
) {
    // SAFETY: the function contract: `MV` panels at `a` with this depth pair inside them, and
    // the inputs of both depths.
    unsafe {
        let mut b0 = [V::zero(); NR];
        let mut b1 = [V::zero(); NR];
        for r in 0..NR {
            (b0[r], b1[r]) = if PACKED {
                (V::broadcast(x.add(r)), V::broadcast(x.add(NR + r)))
            } else {
                (V::broadcast(xr[r]), V::broadcast(xr[r].add(1)))
            };
        }
        for (v, accv) in acc.iter_mut().enumerate() {
            let (w0, w1) = W::load_pair::<V>(a.add(v * a_stride));
            for r in 0..NR {
                accv[r] = V::fma(w0, b0[r], accv[r]);
            }
            for r in 0..NR {
                accv[r] = V::fma(w1, b1[r], accv[r]);
            }
        }
    }
}

/// The micro-kernel: one `MV`-vector by `NR`-row tile over depth `kc`, then accumulate, bias and
/// register epilogue, and store. `PACKED` selects the input addressing (packed micro-panel or
/// plain rows); `W` the stored weight type, widened to f32 as each weight vector is loaded
/// ([`WeightElem::load`]). One body for every ISA, shape and weight type.
///
/// # Safety
/// The CPU supports `V`; every pointer in `t` is valid for the tile's shape (`MV` panels of
/// `kc * LANES` weights, `NR` rows of `kc` inputs or a `kc * NR` packed panel, `rows` output rows
/// of `(MV - 1) * LANES + lanes_last` values).
#[inline(always)]
pub(crate) unsafe fn micro<
    V: Simd,
    W: WeightElem,
    const MV: usize,
    const NR: usize,
    const PACKED: bool,
>(
    t: &TileArgs<'_, W>,
) {
    let l = V::LANES;
    // SAFETY: the function contract covers every access below.
    unsafe {
        // Row pointers for the unpacked case; rows past `rows` repeat the last valid row.
        let mut xr = [t.x; NR];
        if !PACKED {
            for (r, p) in xr.iter_mut().enumerate() {
                *p = t.x.add(r.min(t.rows - 1) * t.x_rs);
            }
        }
        let mut acc = [[V::zero(); NR]; MV];
        let mut a = t.a;
        let mut x = t.x;
        // Depths in pairs (`kk`, `kk + 1`), `a` at the pair's first: a paired panel (bf16) holds
        // both depths of a feature in one 32-bit word. The sums still run depth by depth, in order.
        // Tiles whose accumulators leave registers for both depths' inputs take a pair at a time
        // per weight vector (one load of a paired bf16 vector for both depths); the others go
        // depth by depth (a paired vector is then loaded once per depth, from L1).
        let by_vector = MV * NR + 2 * NR + 2 <= V::REGISTERS;
        // Software prefetch of the panel streams (`WeightElem::prefetch_ahead`), once per cache
        // line of each: a pair of depths spans `pair` bytes of a panel. Only ever a hint (S-7).
        let pair = 2 * l * size_of::<W>();
        let prefetch = W::prefetch_ahead(NR, PACKED);
        let ahead = prefetch / size_of::<W>();
        for i in 0..t.kc / 2 {
            if prefetch > 0 && (i * pair) % 64 < pair {
                for v in 0..MV {
                    W::prefetch(a.wrapping_add(v * t.a_stride + ahead));
                }
            }
            if by_vector {
                pair_step::<V, W, MV, NR, PACKED>(&mut acc, a, t.a_stride, x, &xr);
            } else {
                depth_step::<V, W, MV, NR, PACKED, false>(&mut acc, a, t.a_stride, x, &xr);
                depth_step::<V, W, MV, NR, PACKED, true>(&mut acc, a, t.a_stride, x, &xr);
            }
            a = a.add(2 * l);
            if PACKED {
                x = x.add(2 * NR);
            } else {
                for p in xr.iter_mut() {
                    *p = p.add(2);
                }
            }
        }
        if t.kc % 2 == 1 {
            // The last depth of an odd block, alone (a paired panel's second half is padding).
            depth_step::<V, W, MV, NR, PACKED, false>(&mut acc, a, t.a_stride, x, &xr);
        }
        let rows = t.rows.min(NR);
        let n_of = |v: usize| if v + 1 == MV { t.lanes_last } else { l };
        if t.accumulate {
            for r in 0..rows {
                for (v, accv) in acc.iter_mut().enumerate() {
                    accv[r] = V::add(accv[r], load_n::<V>(t.c.add(r * t.ldc + v * l), n_of(v)));
                }
            }
        }
        if let Some(e) = &t.epi {
            for (v, accv) in acc.iter_mut().enumerate() {
                // The bias is padded to whole vectors.
                let b = V::load(e.bias.add(v * l));
                for x in accv.iter_mut() {
                    *x = V::add(*x, b);
                }
            }
            for op in e.ops {
                epilogue_op::<V, MV, NR>(&mut acc, op, e.col0, t.lanes_last);
            }
        }
        for r in 0..rows {
            let row = t.c.add(r * t.ldc);
            for (v, accv) in acc.iter().enumerate() {
                let (p, n) = (row.add(v * l), n_of(v));
                if n == l {
                    accv[r].store(p);
                } else {
                    accv[r].store_partial(p, n);
                }
            }
        }
    }
}

/// The elementwise entry point of one ISA: an activation over a slice, in place.
///
/// # Safety
/// The CPU supports the ISA.
pub(crate) type ActFn = unsafe fn(Activation, &mut [f32]);

/// The softmax entry point of one ISA: rows of `width` values, in place.
///
/// # Safety
/// The CPU supports the ISA.
pub(crate) type SoftmaxFn = unsafe fn(&mut [f32], usize);

/// `e^x` over a slice, in place, on one ISA.
///
/// # Safety
/// The CPU supports the ISA.
pub(crate) type ExpFn = unsafe fn(&mut [f32]);

/// The tile entry points of one ISA for weights stored as `W`.
pub(crate) struct Tiles<W: 'static> {
    /// Small-batch tiles, by rows `1..=SMALL_BATCH` (index 0 unused): rows handled per tile,
    /// vectors per tile, the `MV`-vector entry and the one-vector entry for the last panels.
    pub(crate) small: [(usize, usize, TileFn<W>, TileFn<W>); SMALL_BATCH + 1],
    /// Blocked path: `NR`, `MV`, the `MV`-vector entry and the one-vector entry.
    pub(crate) big: (usize, usize, TileFn<W>, TileFn<W>),
}

/// The tile shapes of one ISA and its entry points (each ISA's file in `arch/` defines one).
pub(crate) struct Family {
    /// The ISA these entry points need.
    pub(crate) isa: Isa,
    pub(crate) lanes: usize,
    /// Tiles over f32, f16 and bf16 panels (the same shapes, one generic entry point).
    pub(crate) f32: Tiles<f32>,
    pub(crate) f16: Tiles<half::f16>,
    pub(crate) bf16: Tiles<half::bf16>,
    /// Narrow layers in row layout (`gemv.rs`).
    pub(crate) rows: super::gemv::RowFn,
    /// Elementwise activations over a slice ([`vmath::apply_slice`]).
    pub(crate) act: ActFn,
    /// Row-wise softmax ([`vmath::softmax_rows`]).
    pub(crate) softmax: SoftmaxFn,
    /// `e^x` over a slice ([`vmath::exp`], softmax's exponential), for measurement.
    pub(crate) exp: ExpFn,
}

impl Family {
    /// The family of `isa`, which must be supported by this CPU (callers resolve it first).
    pub(crate) fn of(isa: Isa) -> &'static Family {
        super::arch::family(isa)
    }
}

/// The tiles of an 8-lane, 16-register ISA (AVX2 and portable share shapes) for weights of type
/// `$w`, over the entry point `$f::<W, MV, NR, PACKED>`.
macro_rules! tiles8 {
    ($f:ident, $w:ty) => {
        $crate::kernels::gemm::Tiles::<$w> {
            // rows 1: 8 accumulators (two FMA pipes x 4 cycles latency); 2: 4x2; 3-4: 2x4;
            // 5-6: 2x6 (BLIS's Haswell shape); 7-8: a 6-row tile and then the rest.
            small: [
                (1, 8, $f::<$w, 8, 1, false>, $f::<$w, 1, 1, false>),
                (1, 8, $f::<$w, 8, 1, false>, $f::<$w, 1, 1, false>),
                (2, 4, $f::<$w, 4, 2, false>, $f::<$w, 1, 2, false>),
                (4, 2, $f::<$w, 2, 4, false>, $f::<$w, 1, 4, false>),
                (4, 2, $f::<$w, 2, 4, false>, $f::<$w, 1, 4, false>),
                (6, 2, $f::<$w, 2, 6, false>, $f::<$w, 1, 6, false>),
                (6, 2, $f::<$w, 2, 6, false>, $f::<$w, 1, 6, false>),
                (6, 2, $f::<$w, 2, 6, false>, $f::<$w, 1, 6, false>),
                (6, 2, $f::<$w, 2, 6, false>, $f::<$w, 1, 6, false>),
            ],
            big: (6, 2, $f::<$w, 2, 6, true>, $f::<$w, 1, 6, true>),
        }
    };
}
pub(crate) use tiles8;

/// The table of an 8-lane, 16-register ISA (AVX2 and portable share shapes): its tiles for each
/// weight type over its entry point `$f::<W, MV, NR, PACKED>`, its elementwise entry points
/// `$act`, `$soft` and `$exp` and its row-kernel entry `$rows`.
macro_rules! family8 {
    ($isa:expr, $f:ident, $act:ident, $soft:ident, $exp:ident, $rows:ident) => {
        $crate::kernels::gemm::Family {
            isa: $isa,
            lanes: 8,
            f32: $crate::kernels::gemm::tiles8!($f, f32),
            f16: $crate::kernels::gemm::tiles8!($f, half::f16),
            bf16: $crate::kernels::gemm::tiles8!($f, half::bf16),
            rows: $rows,
            act: $act,
            softmax: $soft,
            exp: $exp,
        }
    };
}
pub(crate) use family8;

/// A raw output pointer that may cross threads: the drivers give each task a disjoint rectangle.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint rectangles of the output (see `forward` in `mod.rs`).
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

thread_local! {
    /// Per-thread buffer for packed `X` blocks, grown once and reused (no allocation per call
    /// once warm).
    static XPACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Per-thread buffer for the current block of weights (`MC` features by `KC` depths, in the
    /// packed type, viewed as f32 words), grown once and reused.
    static WBLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copy the segments of panels `panels` at depths `pc .. pc + kc` of `w` into `buf`, panel `j`
/// at `j * bstride`: the weight block the blocked driver streams once per input micro-panel,
/// made contiguous. In place, the block is `MC / LANES` segments `k * LANES` apart; with `k` a
/// multiple of a few hundred they fall into the same sets of a set-associative L2 and evict one
/// another before they are reused (simulated with cachegrind, 512 KiB 8-way: as many L2 misses as
/// reads of the block). Contiguous, the block fills half of L2 without conflicts. The copy costs
/// one read of the block per `NC / NR` reads by the micro-kernel.
fn copy_block<W: WeightElem>(
    buf: &mut [W],
    w: &Packed<W>,
    panels: std::ops::Range<usize>,
    pc: usize,
    kc: usize,
    bstride: usize,
) {
    // A paired layout's last odd depth reads its whole pair.
    let seg = kc.next_multiple_of(2) * w.lanes;
    let src = &w.data.as_slice()[w.offset..];
    for (j, p) in panels.enumerate() {
        let from = p * w.stride + pc * w.lanes;
        buf[j * bstride..j * bstride + seg].copy_from_slice(&src[from..from + seg]);
    }
}

/// Elements between panels of a copied weight block of depth `kc`: the segment rounded up to a
/// cache line, plus one line (as [`Packed::stride`], so that the panels a tile reads side by side
/// do not share L1 sets).
fn block_stride<W>(kc: usize, lanes: usize) -> usize {
    let line = line_of::<W>();
    (kc.next_multiple_of(2) * lanes).div_ceil(line) * line + line
}

/// How the unpacked driver takes `len` rows: the number of chunks (each the rows of one tile of
/// `small[min(left, SMALL_BATCH)]`, `left` the rows not yet taken) and the widest tile's vectors.
/// While `SMALL_BATCH` or more rows are left every chunk is the widest batch's, so those are
/// counted at once (a call of a narrow layer walks thousands of rows, once per layer and part).
fn chunk_shape<T>(small: &[(usize, usize, T, T); SMALL_BATCH + 1], len: usize) -> (usize, usize) {
    let (nr_full, mv_full, ..) = small[SMALL_BATCH];
    let (mut chunks, mut mv_max, mut left) = (0, 1, len);
    if left >= SMALL_BATCH {
        // The smallest count that leaves fewer than SMALL_BATCH rows (`nr_full <= SMALL_BATCH`).
        let full = (left - SMALL_BATCH) / nr_full + 1;
        (chunks, mv_max, left) = (full, mv_full, left - full * nr_full);
    }
    while left > 0 {
        let (nr, mv, ..) = small[left];
        mv_max = mv_max.max(mv);
        chunks += 1;
        left -= nr.min(left);
    }
    (chunks, mv_max)
}

/// Compute rows `rows` and panels `panels` of the output, by the unpacked path if `unpacked`
/// (see [`unpacked_path`]) else by the blocked one.
///
/// # Safety
/// The family's ISA is supported; `x` holds `batch * k` values; `y` points to `batch * n`
/// writable values no other thread touches in this rectangle; `ops` per-feature vectors hold `n`
/// values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_block<W: WeightElem>(
    unpacked: bool,
    blocking: &Blocking,
    fam: &Family,
    w: &Packed<W>,
    x: &[f32],
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    y: OutPtr,
    ops: &[EpilogueOp],
) {
    let (k, n, l) = (w.k, w.n, fam.lanes);
    let tiles = W::tiles(fam);
    let split = register_prefix(ops);
    let lanes_of = |p_end: usize| {
        if p_end == w.panels {
            n - (w.panels - 1) * l
        } else {
            l
        }
    };
    // Ops that cannot run in registers, on the tile just stored (hot in L1).
    let post = |r0: usize, nrows: usize, p0: usize, p1: usize| {
        if split == ops.len() {
            return;
        }
        let (c0, c1) = (p0 * l, (p1 * l).min(n));
        for r in r0..r0 + nrows {
            // SAFETY: row `r`, features `c0..c1` are inside this task's rectangle.
            let seg = unsafe { std::slice::from_raw_parts_mut(y.0.add(r * n + c0), c1 - c0) };
            super::apply_epilogue_with(fam.isa, &ops[split..], seg, c0);
        }
    };
    let epi = |p: usize| Epi {
        bias: w.bias.as_ptr().wrapping_add(p * l),
        col0: p * l,
        ops: &ops[..split],
    };

    if unpacked {
        // With more than one chunk of rows, take the panels in groups that stay in L2 while every
        // chunk of rows passes over them: the weights then come from L3 once per call, not once
        // per chunk (the inputs are re-read per group instead, far fewer bytes).
        // The chunks of rows and their tiles' widths: a group is a multiple of the widest (all
        // are powers of two), so that no chunk falls back to one-vector tiles inside a group.
        let (chunks, mv_max) = chunk_shape(&tiles.small, rows.len());
        // One chunk streams the weights once whatever the grouping. With two or more (7 rows
        // and up, as 6 + 1 or 6 + 2 on AVX2) ungrouped panels would stream the weights from
        // memory once per chunk: a 4096-wide layer at batch 8 took twice its bandwidth time.
        let group = if chunks <= 1 {
            panels.len().max(1)
        } else {
            (blocking.group_bytes / (w.stride * size_of::<W>())).max(mv_max) / mv_max * mv_max
        };
        for g0 in panels.clone().step_by(group) {
            let g1 = (g0 + group).min(panels.end);
            let mut r = rows.start;
            while r < rows.end {
                let (nr, mv, full, one) = tiles.small[(rows.end - r).min(SMALL_BATCH)];
                let nrows = nr.min(rows.end - r);
                let mut p = g0;
                while p < g1 {
                    let (m, f) = if g1 - p >= mv { (mv, full) } else { (1, one) };
                    let t = TileArgs {
                        kc: k,
                        a: w.panel_ptr(p, 0),
                        a_stride: w.stride,
                        x: x.as_ptr().wrapping_add(r * k),
                        x_rs: k,
                        rows: nrows,
                        c: y.0.wrapping_add(r * n + p * l),
                        ldc: n,
                        lanes_last: lanes_of(p + m),
                        accumulate: false,
                        epi: Some(epi(p)),
                    };
                    // SAFETY: the tile covers panels `p..p+m` (inside `w`), rows `r..r+nrows` of
                    // `x` and `y`; the function contract gives the ISA and the buffers.
                    unsafe { f(&t) };
                    post(r, nrows, p, p + m);
                    p += m;
                }
                r += nrows;
            }
        }
        return;
    }

    let (nr, mv, full, one) = tiles.big;
    let Blocking {
        kc: kc_max,
        mc,
        nc: nc_max,
        ..
    } = *blocking;
    let mc_panels = (mc / l).max(mv) / mv * mv;
    let bstride = block_stride::<W>(kc_max, l);
    // The weight block as `W`, in f32 words (2-byte types pack two per word).
    let wwords = (mc_panels * bstride * size_of::<W>()).div_ceil(4);
    WBLOCK.with_borrow_mut(|wbuf| {
        if wbuf.len() < wwords {
            wbuf.resize(wwords, 0.0);
        }
        let wblock: &mut [W] = bytemuck::cast_slice_mut(&mut wbuf[..wwords]);
        XPACK.with_borrow_mut(|buf| {
            let need = nc_max.div_ceil(nr) * nr * kc_max;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            for jc in rows.clone().step_by(nc_max) {
                let nc = nc_max.min(rows.end - jc);
                for pc in (0..k).step_by(kc_max) {
                    let kc = kc_max.min(k - pc);
                    let last = pc + kc == k;
                    pack_x(&mut buf[..], x, k, jc, nc, pc, kc, nr);
                    for ic in panels.clone().step_by(mc_panels) {
                        let ic_end = (ic + mc_panels).min(panels.end);
                        copy_block(wblock, w, ic..ic_end, pc, kc, bstride);
                        for jr in (0..nc).step_by(nr) {
                            let nrows = nr.min(nc - jr);
                            let mut p = ic;
                            while p < ic_end {
                                let (m, f) = if ic_end - p >= mv {
                                    (mv, full)
                                } else {
                                    (1, one)
                                };
                                let t = TileArgs {
                                    kc,
                                    a: wblock.as_ptr().wrapping_add((p - ic) * bstride),
                                    a_stride: bstride,
                                    x: buf.as_ptr().wrapping_add(jr * kc),
                                    x_rs: 0,
                                    rows: nrows,
                                    c: y.0.wrapping_add((jc + jr) * n + p * l),
                                    ldc: n,
                                    lanes_last: lanes_of(p + m),
                                    accumulate: pc > 0,
                                    epi: if last { Some(epi(p)) } else { None },
                                };
                                // SAFETY: as in the small path, with the weights of panels
                                // `p..p+m` copied to `wblock` (`bstride` apart, each the whole
                                // `kc`-deep segment); `buf` holds the packed micro-panel of `kc * nr`
                                // values at `jr * kc`.
                                unsafe { f(&t) };
                                if last {
                                    post(jc + jr, nrows, p, p + m);
                                }
                                p += m;
                            }
                        }
                    }
                }
            }
        });
    });
}

/// Pack rows `jc .. jc + nc`, depth `pc .. pc + kc` of `x` into `nr`-row micro-panels: panel `j`
/// at `j * nr * kc`, value `(kk, r)` at `kk * nr + r`, rows past `nc` zero.
#[allow(clippy::too_many_arguments)]
fn pack_x(
    buf: &mut [f32],
    x: &[f32],
    k: usize,
    jc: usize,
    nc: usize,
    pc: usize,
    kc: usize,
    nr: usize,
) {
    for (j, panel) in buf
        .chunks_exact_mut(nr * kc)
        .take(nc.div_ceil(nr))
        .enumerate()
    {
        let valid = nr.min(nc - j * nr);
        let rows: [&[f32]; 8] = std::array::from_fn(|r| {
            let row = jc + j * nr + r.min(valid - 1);
            &x[row * k + pc..row * k + pc + kc]
        });
        // Written in order, read from `nr` row streams.
        for (kk, out) in panel.chunks_exact_mut(nr).enumerate() {
            for (r, o) in out.iter_mut().enumerate() {
                *o = if r < valid { rows[r][kk] } else { 0.0 };
            }
        }
    }
}

/// Scalar fallback for `k == 0`: the output is the bias, then the epilogue.
pub(crate) fn bias_only<W: WeightElem>(
    isa: Isa,
    w: &Packed<W>,
    batch: usize,
    y: &mut [f32],
    ops: &[EpilogueOp],
) {
    for row in y.chunks_exact_mut(w.n).take(batch) {
        row.copy_from_slice(&w.bias[..w.n]);
        super::apply_epilogue_with(isa, ops, row, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl<W: WeightElem> Packed<W> {
        /// `w` (`[n, k]` row-major) and `bias` (`n`) packed row by row.
        fn new(w: &[f32], bias: &[f32], n: usize, k: usize, lanes: usize) -> Packed<W> {
            let mut p = Packed::zeroed(n, k, lanes);
            for o in 0..n {
                p.set_row(o, &w[o * k..(o + 1) * k], bias[o]);
            }
            p
        }
    }

    /// Large weights live in their own mapping, small ones on the heap; both pack the same values
    /// into the same places, and a clone copies them. For each stored type: the panels start on a
    /// cache line, and so does every panel after them (the stride is whole lines).
    fn packed_storage_by_size_and_clone<W: WeightElem>() {
        for (n, k, mapped) in [(3, 5, false), (2048, 600, true)] {
            // Small integers: exact in every type.
            let w: Vec<f32> = (0..n * k).map(|i| (i % 200) as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
            let p = Packed::<W>::new(&w, &b, n, k, 16);
            assert_eq!(matches!(p.data, Store::Mapped(_)), mapped);
            assert_eq!((p.stride * size_of::<W>()) % 64, 0, "stride in whole lines");
            let q = p.clone();
            for pk in [&p, &q] {
                for (f, kk) in [(0, 0), (n - 1, k - 1), (n / 2, k / 3)] {
                    // SAFETY: panel `f / 16` at depth `kk` is inside the packed data.
                    let v = unsafe { *pk.panel_ptr(f / 16, 0).add(W::index(kk, f % 16, 16)) };
                    assert_eq!(v.to_f32(), w[f * k + kk], "feature {f} depth {kk}");
                }
                assert_eq!(
                    pk.panel_ptr(0, 0) as usize % 64,
                    0,
                    "panels start on a cache line"
                );
                assert_eq!(pk.bias[..n], b[..]);
            }
        }
    }

    #[test]
    fn packed_storage_by_size_and_clone_every_type() {
        packed_storage_by_size_and_clone::<f32>();
        packed_storage_by_size_and_clone::<half::f16>();
        packed_storage_by_size_and_clone::<half::bf16>();
    }

    /// `chunk_shape` counts what walking the rows one tile at a time counts, on every path's
    /// tile table.
    #[test]
    fn chunk_shape_matches_the_walk() {
        for isa in Isa::supported() {
            let small = &f32::tiles(Family::of(isa)).small;
            for len in 0..300 {
                let (mut chunks, mut mv_max, mut left) = (0, 1, len);
                while left > 0 {
                    let (nr, mv, ..) = small[left.min(SMALL_BATCH)];
                    mv_max = mv_max.max(mv);
                    chunks += 1;
                    left -= nr.min(left);
                }
                assert_eq!(chunk_shape(small, len), (chunks, mv_max), "{isa} {len}");
            }
        }
    }

    /// The driver choice on the caches of the AVX2 machine the bound was measured on (32 KiB L1d,
    /// 512 KiB L2, 8 MiB L3, as `Caches::FALLBACK`; AVX2's blocked tile is 6 rows by 16): each
    /// rule on its own, and the measured shapes on the side they were measured faster.
    #[test]
    fn driver_choice_follows_the_cache_bounds() {
        let b = Blocking::derive(&super::super::cache::Caches::FALLBACK, 6, 16, 4);
        // f32 weights up to the 512 KiB L2, inputs up to a quarter of the 8 MiB L3.
        assert_eq!(
            (b.unpacked_max_weights, b.unpacked_max_inputs),
            (128 << 10, 512 << 10)
        );
        // Small batches always stream.
        assert!(unpacked_path(&b, SMALL_BATCH, 4096, 4096));
        // Inputs within a quarter of L3: unpacked whatever the weights.
        assert!(unpacked_path(&b, 512, 1024, 4096));
        // Past it, weights within L2 still stream (the inputs are read at most four times)...
        for (batch, k, n) in [
            (16384, 180, 180),
            (16384, 1024, 30),
            (16384, 30, 1024),
            (8192, 362, 362),
        ] {
            assert!(unpacked_path(&b, batch, k, n), "{batch} x {k} x {n}");
        }
        // ... and larger ones are blocked.
        for (batch, k, n) in [
            (1024, 1024, 1024),
            (1536, 1024, 1024),
            (1024, 784, 1024),
            (2048, 512, 512),
            (256, 4096, 4096),
        ] {
            assert!(!unpacked_path(&b, batch, k, n), "{batch} x {k} x {n}");
        }
    }

    /// Half-precision panels hold half the bytes of f32 ones (plus the f32 bias).
    #[test]
    fn half_panels_hold_half_the_bytes() {
        let (n, k) = (512, 512);
        let w = vec![0.5f32; n * k];
        let b = vec![0.0f32; n];
        let full = Packed::<f32>::new(&w, &b, n, k, 8).bytes();
        for half in [
            Packed::<half::f16>::new(&w, &b, n, k, 8).bytes(),
            Packed::<half::bf16>::new(&w, &b, n, k, 8).bytes(),
        ] {
            assert!(half * 100 <= full * 51, "{half} vs {full}");
        }
    }
}
