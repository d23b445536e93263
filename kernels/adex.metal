// Metal kernels of the fused AdEx ops (Apple GPUs): one thread per neuron, the time loop inside,
// the state in registers, [T, M] rows read and written coalesced. The math is adex_math.h's
// (prepended to this source by src/fused/metal.rs, which compiles it at run time; the include
// below serves offline compilers and the host check); this file only moves data. The same
// structure as adex.cu, in Metal's words: buffers bound by index instead of pointers in a
// struct, and no f64 (Metal has no double).
//
// Kernels (names from the macros at the end; src/fused/metal.rs dispatches them, and a test
// holds every name and buffer index used there to this file):
//   adex_fwd_<E>_<O>   sequence forward (the step is a sequence of one), E in {f32, f16, bf16}
//                      data, O spikes (E, or u8); encoder and feed-forward neurons, an optional
//                      second drive, optional recording, scalar or per-neuron parameters
//   adex_bwd_<E>_<K>   sequence backward (reverse time, checkpointed recomputation) for
//                      surrogate method K (the order of SurrogateMethod::ALL)
// bf16 needs Metal 3.1 (macOS 14); on older systems those kernels are absent and the Rust side
// says so.
#ifndef ADEX_MATH_H
#include "adex_math.h"
#endif

// ---------------------------------------------------------------- launch parameters

// One struct per dispatch, bound at ADEX_BUF_PARAMS; src/fused/metal.rs declares the same
// layout (#[repr(C)] Params). Absent buffers are bound to a placeholder and never read, the
// flags say which are present.
struct AdexParams {
    ulong t;       // steps
    ulong m;       // neurons (all batch rows)
    ulong np;      // neurons per parameter row: neuron k has parameters k % np
    uint syn;      // 1: feed-forward neuron (state v, i, a); 0: encoder (v, a)
    uint has_x2;   // 1: a second drive is added to the jump
    uint record;   // 1: post-step states recorded (forward) / their gradients read (backward)
    uint method;   // surrogate method (backward; informational, each kernel has its own)
    float alpha;   // surrogate alpha (backward)
    uint pad;
};

// Buffer indices, shared by both kernel families (src/fused/metal.rs: mod buf).
#define ADEX_BUF_XS 0      // [T, M] input current
#define ADEX_BUF_X2 1      // [T, M] second drive
#define ADEX_BUF_V0 2      // [M] initial state
#define ADEX_BUF_I0 3      // [M] (feed-forward only)
#define ADEX_BUF_A0 4      // [M]
#define ADEX_BUF_COEFS 5   // [11, NP] parameters (float; NP = 1 for scalar ones)
#define ADEX_BUF_PARAMS 6  // AdexParams
// forward outputs
#define ADEX_BUF_SPIKES 7  // [T, M] of O
#define ADEX_BUF_LAST_V 8  // [M] final state
#define ADEX_BUF_LAST_I 9
#define ADEX_BUF_LAST_A 10
#define ADEX_BUF_REC_V 11  // [T, M] post-step states
#define ADEX_BUF_REC_I 12
#define ADEX_BUF_REC_A 13
// backward inputs (output gradients) and outputs
#define ADEX_BUF_G_SPIKES 7  // [T, M]
#define ADEX_BUF_G_LAST_V 8  // [M]
#define ADEX_BUF_G_LAST_I 9
#define ADEX_BUF_G_LAST_A 10
#define ADEX_BUF_G_REC_V 11  // [T, M]
#define ADEX_BUF_G_REC_I 12
#define ADEX_BUF_G_REC_A 13
#define ADEX_BUF_G_XS 14     // [T, M] input gradient
#define ADEX_BUF_G0_V 15     // [M] initial-state gradient
#define ADEX_BUF_G0_I 16
#define ADEX_BUF_G0_A 17
#define ADEX_BUF_CKPT 18     // [(ceil(T/SEG) - 1) * 3, M] float scratch

// ---------------------------------------------------------------- storage conversions

// Loads convert to float (the compute precision of every Metal dtype); stores round to the
// storage type (round to nearest even), or give 0/1 for u8 spikes.
template <typename O>
struct AdexStore {
    static O from(float x) { return O(x); }
};
template <>
struct AdexStore<uchar> {
    static uchar from(float x) { return x != 0.0f ? uchar(1) : uchar(0); }
};

ADEX_FN AdexCoef<float> adex_coef_of(device const float* coefs, ulong n, ulong np) {
    device const float* p = coefs + n % np;
    AdexCoef<float> r = {p[0],      p[np],     p[2 * np], p[3 * np], p[4 * np], p[5 * np],
                         p[6 * np], p[7 * np], p[8 * np], p[9 * np], p[10 * np]};
    return r;
}

// One step of a thread's neuron driven by i_jump: advances (v, i, a) and returns the spike.
ADEX_FN float adex_advance(AdexCoef<float> c, bool syn, float i_jump, thread float& v,
                           thread float& i, thread float& a) {
    const AdexStep<float> s = adex_update(c, v, i_jump, a);
    if (syn) i = adex_synapse(c, i_jump);
    v = s.v;
    a = s.a;
    return s.z;
}

// ---------------------------------------------------------------- forward

// Steps loaded ahead of their compute (memory-level parallelism per thread).
#define ADEX_UNROLL 4

template <typename E, typename O>
ADEX_FN void adex_fwd(device const E* xs, device const E* x2s, device const E* v0,
                      device const E* i0, device const E* a0, device const float* coefs,
                      constant AdexParams& prm, device O* spikes, device E* last_v,
                      device E* last_i, device E* last_a, device E* rec_v, device E* rec_i,
                      device E* rec_a, uint tid) {
    const ulong m = prm.m, steps = prm.t, n = tid;
    if (n >= m) return;
    const AdexCoef<float> c = adex_coef_of(coefs, n, prm.np);
    const bool syn = prm.syn != 0, has_x2 = prm.has_x2 != 0, rec = prm.record != 0;
    float v = float(v0[n]);
    float i = syn ? float(i0[n]) : 0.0f;
    float a = float(a0[n]);
    // `row` is the offset of this thread's element in row t0; rows are `m` apart.
    for (ulong t0 = 0, row = n; t0 < steps; t0 += ADEX_UNROLL, row += ADEX_UNROLL * m) {
        float x[ADEX_UNROLL], x2[ADEX_UNROLL];
        for (int k = 0; k < ADEX_UNROLL; ++k) {
            const ulong at = row + ulong(k) * m;
            const bool live = t0 + ulong(k) < steps;
            x[k] = live ? float(xs[at]) : 0.0f;
            x2[k] = live && has_x2 ? float(x2s[at]) : 0.0f;
        }
        for (int k = 0; k < ADEX_UNROLL; ++k) {
            if (t0 + ulong(k) >= steps) break;
            const ulong at = row + ulong(k) * m;
            const float z = adex_advance(c, syn, adex_jump(syn, has_x2, i, x[k], x2[k]), v, i, a);
            spikes[at] = AdexStore<O>::from(z);
            if (rec) {
                rec_v[at] = AdexStore<E>::from(v);
                if (syn) rec_i[at] = AdexStore<E>::from(i);
                rec_a[at] = AdexStore<E>::from(a);
            }
        }
    }
    last_v[n] = AdexStore<E>::from(v);
    if (syn) last_i[n] = AdexStore<E>::from(i);
    last_a[n] = AdexStore<E>::from(a);
}

// ---------------------------------------------------------------- backward

// Steps per checkpoint segment: the pre-step states of one segment live in registers.
#define ADEX_SEG 16

template <typename E, int METHOD>
ADEX_FN void adex_bwd(device const E* xs, device const E* x2s, device const E* v0p,
                      device const E* i0p, device const E* a0p, device const float* coefs,
                      constant AdexParams& prm, device const E* g_spikes,
                      device const E* g_last_v, device const E* g_last_i,
                      device const E* g_last_a, device const E* g_rec_v,
                      device const E* g_rec_i, device const E* g_rec_a, device E* g_xs,
                      device E* g0_v, device E* g0_i, device E* g0_a, device float* ckpt,
                      uint tid) {
    const ulong m = prm.m, steps = prm.t, n = tid;
    if (n >= m) return;
    const AdexCoef<float> c = adex_coef_of(coefs, n, prm.np);
    const bool syn = prm.syn != 0, has_x2 = prm.has_x2 != 0, rec = prm.record != 0;
    const float alpha = prm.alpha;
    const float v0 = float(v0p[n]);
    const float i0 = syn ? float(i0p[n]) : 0.0f;
    const float a0 = float(a0p[n]);
    const ulong nseg = steps == 0 ? 1 : (steps + ADEX_SEG - 1) / ADEX_SEG;
    // Pass 1: the pre-step state at the start of every segment but the first.
    {
        float v = v0, i = i0, a = a0;
        for (ulong t = 0; t < (nseg - 1) * ADEX_SEG; ++t) {
            const ulong at = t * m + n;
            adex_advance(c, syn,
                         adex_jump(syn, has_x2, i, float(xs[at]), has_x2 ? float(x2s[at]) : 0.0f),
                         v, i, a);
            if ((t + 1) % ADEX_SEG == 0) {
                device float* ck = ckpt + ((t + 1) / ADEX_SEG - 1) * 3 * m + n;
                ck[0] = v;
                ck[m] = i;
                ck[2 * m] = a;
            }
        }
    }
    // Pass 2: segments in reverse; each recomputed forward into registers, then walked back.
    float gv = float(g_last_v[n]);
    float gi = syn ? float(g_last_i[n]) : 0.0f;
    float ga = float(g_last_a[n]);
    for (ulong s = nseg; s-- > 0;) {
        const ulong t0 = s * ADEX_SEG;
        float v = v0, i = i0, a = a0;
        if (s > 0) {
            device const float* ck = ckpt + (s - 1) * 3 * m + n;
            v = ck[0];
            i = ck[m];
            a = ck[2 * m];
        }
        float pv[ADEX_SEG], pj[ADEX_SEG], pa[ADEX_SEG];
        for (int k = 0; k < ADEX_SEG; ++k) {
            pv[k] = v;
            pj[k] = 0.0f;
            pa[k] = a;
            if (t0 + ulong(k) < steps) {
                const ulong at = (t0 + ulong(k)) * m + n;
                const float i_jump =
                    adex_jump(syn, has_x2, i, float(xs[at]), has_x2 ? float(x2s[at]) : 0.0f);
                pj[k] = i_jump;
                adex_advance(c, syn, i_jump, v, i, a);
            }
        }
        for (int k = ADEX_SEG - 1; k >= 0; --k) {
            if (t0 + ulong(k) < steps) {
                const ulong at = (t0 + ulong(k)) * m + n;
                if (rec) {
                    gv += float(g_rec_v[at]);
                    if (syn) gi += float(g_rec_i[at]);
                    ga += float(g_rec_a[at]);
                }
                const float gz = float(g_spikes[at]);
                const AdexGrad<float> g =
                    adex_update_backward(c, METHOD, alpha, pv[k], pj[k], pa[k], gz, gv, gi, ga);
                g_xs[at] = AdexStore<E>::from(g.i_jump);
                gv = g.v;
                ga = g.a;
                if (syn) gi = g.i_jump;
            }
        }
    }
    g0_v[n] = AdexStore<E>::from(gv);
    if (syn) g0_i[n] = AdexStore<E>::from(gi);
    g0_a[n] = AdexStore<E>::from(ga);
}

// ---------------------------------------------------------------- entry points

// The inputs both kernel families read.
#define ADEX_INPUTS(E)                                                              \
    device const E *xs [[buffer(ADEX_BUF_XS)]], device const E *x2 [[buffer(ADEX_BUF_X2)]], \
        device const E *v0 [[buffer(ADEX_BUF_V0)]],                                  \
        device const E *i0 [[buffer(ADEX_BUF_I0)]],                                  \
        device const E *a0 [[buffer(ADEX_BUF_A0)]],                                  \
        device const float *coefs [[buffer(ADEX_BUF_COEFS)]],                        \
        constant AdexParams &prm [[buffer(ADEX_BUF_PARAMS)]]

#define ADEX_FWD(NAME, E, O)                                                          \
    kernel void NAME(ADEX_INPUTS(E), device O *spikes [[buffer(ADEX_BUF_SPIKES)]],    \
                     device E *last_v [[buffer(ADEX_BUF_LAST_V)]],                    \
                     device E *last_i [[buffer(ADEX_BUF_LAST_I)]],                    \
                     device E *last_a [[buffer(ADEX_BUF_LAST_A)]],                    \
                     device E *rec_v [[buffer(ADEX_BUF_REC_V)]],                      \
                     device E *rec_i [[buffer(ADEX_BUF_REC_I)]],                      \
                     device E *rec_a [[buffer(ADEX_BUF_REC_A)]],                      \
                     uint tid [[thread_position_in_grid]]) {                          \
        adex_fwd<E, O>(xs, x2, v0, i0, a0, coefs, prm, spikes, last_v, last_i, last_a, rec_v, \
                       rec_i, rec_a, tid);                                            \
    }

#define ADEX_BWD(NAME, E, METHOD)                                                     \
    kernel void NAME(ADEX_INPUTS(E), device const E *g_spikes [[buffer(ADEX_BUF_G_SPIKES)]], \
                     device const E *g_last_v [[buffer(ADEX_BUF_G_LAST_V)]],          \
                     device const E *g_last_i [[buffer(ADEX_BUF_G_LAST_I)]],          \
                     device const E *g_last_a [[buffer(ADEX_BUF_G_LAST_A)]],          \
                     device const E *g_rec_v [[buffer(ADEX_BUF_G_REC_V)]],            \
                     device const E *g_rec_i [[buffer(ADEX_BUF_G_REC_I)]],            \
                     device const E *g_rec_a [[buffer(ADEX_BUF_G_REC_A)]],            \
                     device E *g_xs [[buffer(ADEX_BUF_G_XS)]],                        \
                     device E *g0_v [[buffer(ADEX_BUF_G0_V)]],                        \
                     device E *g0_i [[buffer(ADEX_BUF_G0_I)]],                        \
                     device E *g0_a [[buffer(ADEX_BUF_G0_A)]],                        \
                     device float *ckpt [[buffer(ADEX_BUF_CKPT)]],                    \
                     uint tid [[thread_position_in_grid]]) {                          \
        adex_bwd<E, METHOD>(xs, x2, v0, i0, a0, coefs, prm, g_spikes, g_last_v, g_last_i, \
                            g_last_a, g_rec_v, g_rec_i, g_rec_a, g_xs, g0_v, g0_i, g0_a, ckpt, \
                            tid);                                                     \
    }

// One backward kernel per dtype and surrogate method (the method a compile-time constant, so
// each kernel holds only its own surrogate): adex_bwd_<dtype>_<method number>.
#define ADEX_BWD_ALL(E, SUFFIX)                           \
    ADEX_BWD(adex_bwd_##SUFFIX##_0, E, ADEX_SUPER)        \
    ADEX_BWD(adex_bwd_##SUFFIX##_1, E, ADEX_TRIANGLE)     \
    ADEX_BWD(adex_bwd_##SUFFIX##_2, E, ADEX_TANH)         \
    ADEX_BWD(adex_bwd_##SUFFIX##_3, E, ADEX_CIRC)         \
    ADEX_BWD(adex_bwd_##SUFFIX##_4, E, ADEX_HEAVI_ERFC)   \
    ADEX_BWD(adex_bwd_##SUFFIX##_5, E, ADEX_HEAVISIDE)

ADEX_FWD(adex_fwd_f32_f32, float, float)
ADEX_FWD(adex_fwd_f32_u8, float, uchar)
ADEX_FWD(adex_fwd_f16_f16, half, half)
ADEX_FWD(adex_fwd_f16_u8, half, uchar)
ADEX_BWD_ALL(float, f32)
ADEX_BWD_ALL(half, f16)
#if defined(__HAVE_BFLOAT__)
ADEX_FWD(adex_fwd_bf16_bf16, bfloat, bfloat)
ADEX_FWD(adex_fwd_bf16_u8, bfloat, uchar)
ADEX_BWD_ALL(bfloat, bf16)
#endif
