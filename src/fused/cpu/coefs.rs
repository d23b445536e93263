//! Layer 5c (CPU kernels): a call's resolved parameters and their lane packs.
//!
//! Scalar parameters are splatted at each use (LLVM keeps them in registers or broadcasts
//! them); per-neuron ones reach the lane loop as packs in memory that the math reads by
//! reference, so the loads fold into the arithmetic. The two are the kernels' one duplicated
//! loop: broadcasts measured faster than loaded lane arrays for the common scalar case.

use super::super::math::{Coef, Lanes, Real, N_COEF};
use super::{LoadStore, BLOCK, P};
use std::ops::Deref;

/// Parameters for a call: one set for all neurons, or one per neuron (`[N]` each, the neuron
/// index being the flat index modulo `N`).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per call
pub(crate) enum Coefs<F> {
    Scalar(Coef<F>),
    PerNeuron { n: usize, fields: [Vec<F>; N_COEF] },
}

/// A block's per-neuron parameters as packs of `G * V` lanes.
pub(super) struct BlockCoef<F, const V: usize, const G: usize> {
    packs: Vec<Coef<P<F, V, G>>>,
}

impl<F: Real, const V: usize, const G: usize> BlockCoef<F, V, G> {
    /// Packs for one thread's blocks of a call: scalar parameters splatted here if
    /// `splat_scalar` (a loop that splats them at each use needs none, and short calls feel
    /// the filling), per-neuron ones filled block by block by [`BlockCoef::set_block`].
    pub(super) fn for_call(coefs: &Coefs<F>, splat_scalar: bool) -> Self {
        let one = match coefs {
            Coefs::Scalar(_) if !splat_scalar => return BlockCoef { packs: Vec::new() },
            Coefs::Scalar(c) => c.to_array(),
            Coefs::PerNeuron { .. } => [F::ZERO; N_COEF],
        };
        BlockCoef {
            packs: vec![Coef::from_fn(|k| <P<F, V, G>>::splat(one[k])); BLOCK / (G * V)],
        }
    }

    /// Makes these the packs of block `(m0, len)` (nothing to do for scalar parameters).
    #[inline(always)]
    pub(super) fn set_block(&mut self, coefs: &Coefs<F>, (m0, len): (usize, usize)) {
        let Coefs::PerNeuron { n, fields } = coefs else {
            return;
        };
        let mut lanes = [F::ZERO; BLOCK];
        let pack = G * V;
        for (k, field) in fields.iter().enumerate() {
            for (l, slot) in lanes.iter_mut().enumerate() {
                // Padding lanes repeat the first neuron, so they stay finite.
                let m = m0 + if l < len { l } else { 0 };
                *slot = field[m % n];
            }
            for (p, c) in self.packs.iter_mut().enumerate() {
                *c.fields_mut()[k] = <P<F, V, G>>::load(&lanes[p * pack..]);
            }
        }
    }
}

/// Where the lane loop takes pack `p`'s parameters from: a reference into [`BlockCoef`], or a
/// splat made at the use (no closures here: LLVM does not always inline them into the kernels'
/// instruction-set contexts, and an outlined closure loses AVX2/FMA).
pub(super) trait PackSource<F, const V: usize, const G: usize> {
    type Pack<'a>: Deref<Target = Coef<P<F, V, G>>>
    where
        Self: 'a;
    fn pack(&self, p: usize) -> Self::Pack<'_>;
}

impl<F: Real, const V: usize, const G: usize> PackSource<F, V, G> for BlockCoef<F, V, G> {
    type Pack<'a> = &'a Coef<P<F, V, G>>;
    #[inline(always)]
    fn pack(&self, p: usize) -> &Coef<P<F, V, G>> {
        &self.packs[p]
    }
}

/// A splatted parameter set, owned by the pack loop's iteration.
pub(super) struct Splat<C>(C);

impl<C> Deref for Splat<C> {
    type Target = C;
    #[inline(always)]
    fn deref(&self) -> &C {
        &self.0
    }
}

impl<F: Real, const V: usize, const G: usize> PackSource<F, V, G> for Coef<F> {
    type Pack<'a> = Splat<Coef<P<F, V, G>>>;
    #[inline(always)]
    fn pack(&self, _p: usize) -> Splat<Coef<P<F, V, G>>> {
        let a = self.to_array();
        Splat(Coef::from_fn(|k| <P<F, V, G>>::splat(a[k])))
    }
}
