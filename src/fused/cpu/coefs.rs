//! Layer 5c (CPU kernels): a call's resolved parameters and their lane arrays.
//!
//! Both kinds of parameters reach the lane loop the same way, as lane arrays loaded pack by
//! pack, so scalar and per-neuron calls share one compiled kernel: scalar parameters fill the
//! arrays once per thread, per-neuron ones once per block.

use super::super::math::{Coef, Real, N_COEF};
use super::{BLOCK, GROUPS, P};

/// Parameters for a call: one set for all neurons, or one per neuron (`[N]` each, the neuron
/// index being the flat index modulo `N`).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per call
pub(crate) enum Coefs<F> {
    Scalar(Coef<F>),
    PerNeuron { n: usize, fields: [Vec<F>; N_COEF] },
}

/// A block's parameters, lane by lane.
pub(super) struct BlockCoef<F> {
    lanes: [[F; BLOCK]; N_COEF],
}

impl<F: Real> BlockCoef<F> {
    /// Lanes for `coefs`: filled here for scalar parameters, by [`BlockCoef::refill`] per block
    /// for per-neuron ones.
    #[inline(always)]
    pub(super) fn new(coefs: &Coefs<F>) -> Self {
        let mut b = BlockCoef {
            lanes: [[F::ZERO; BLOCK]; N_COEF],
        };
        match coefs {
            Coefs::Scalar(c) => {
                for (lane, v) in b.lanes.iter_mut().zip(c.to_array()) {
                    *lane = [v; BLOCK];
                }
            }
            Coefs::PerNeuron { .. } => {}
        }
        b
    }

    /// Makes these the lanes of block `(m0, len)` (nothing to do for scalar parameters).
    #[inline(always)]
    pub(super) fn refill(&mut self, coefs: &Coefs<F>, (m0, len): (usize, usize)) {
        if let Coefs::PerNeuron { n, fields } = coefs {
            for (lane, field) in self.lanes.iter_mut().zip(fields) {
                for (l, slot) in lane.iter_mut().enumerate() {
                    // Padding lanes repeat the first neuron, so they stay finite.
                    let m = m0 + if l < len { l } else { 0 };
                    *slot = field[m % n];
                }
            }
        }
    }

    /// Pack `p` of `GROUPS * V` lanes.
    #[inline(always)]
    pub(super) fn pack<const V: usize>(&self, p: usize) -> Coef<P<F, V>> {
        let at = p * GROUPS * V;
        Coef::from_array(std::array::from_fn(|k| {
            super::LoadStore::load(&self.lanes[k][at..])
        }))
    }
}
