// CUDA kernels of the fused AdEx ops: one thread per neuron, the time loop inside, the state in
// registers, [T, M] rows read and written coalesced (consecutive threads, consecutive neurons).
// The math is adex_math.h's; this file only moves data. Compiled to PTX (compute_80) by build.rs
// with -fmad=false, so that no product is contracted into an FMA the Rust kernel does not have.
//
// Kernels (extern "C", names built by the macros at the end; src/fused/cuda.rs launches them):
//   adex_fwd_<E>_<O>   sequence forward (the step is a sequence of one), E in {f32, f16, bf16,
//                      f64} data, O spikes (E, or u8); encoder and feed-forward neurons, an
//                      optional second drive, optional recording, scalar or per-neuron parameters
//   adex_bwd_<E>_<K>   sequence backward (reverse time, checkpointed recomputation) for
//                      surrogate method K (the order of SurrogateMethod::ALL)
//   adex_poison_u8     fills a buffer with 0xff (NaN for every float type), for checks
#ifndef ADEX_HOST_EMULATION  // kernels/adex_cuda_emu.cpp compiles this file on the host
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include <stdint.h>

#include "adex_math.h"

// ---------------------------------------------------------------- storage conversions

template <typename E>
struct Io;

template <>
struct Io<float> {
    typedef float F;
    static __device__ __forceinline__ float load(const float* p) { return __ldg(p); }
    static __device__ __forceinline__ float from(float x) { return x; }
};
template <>
struct Io<double> {
    typedef double F;
    static __device__ __forceinline__ double load(const double* p) { return __ldg(p); }
    static __device__ __forceinline__ double from(double x) { return x; }
};
#ifndef ADEX_HOST_EMULATION
template <>
struct Io<__half> {
    typedef float F;
    static __device__ __forceinline__ float load(const __half* p) {
        return __half2float(__ldg(p));
    }
    static __device__ __forceinline__ __half from(float x) { return __float2half_rn(x); }
};
template <>
struct Io<__nv_bfloat16> {
    typedef float F;
    static __device__ __forceinline__ float load(const __nv_bfloat16* p) {
        return __bfloat162float(__ldg(p));
    }
    static __device__ __forceinline__ __nv_bfloat16 from(float x) {
        return __float2bfloat16_rn(x);
    }
};
#endif
template <>
struct Io<uint8_t> {
    static __device__ __forceinline__ uint8_t from(float x) { return x != 0.0f; }
    static __device__ __forceinline__ uint8_t from(double x) { return x != 0.0; }
};

// ---------------------------------------------------------------- arguments

// One struct per launch; src/fused/cuda.rs declares the same layout (#[repr(C)]). Pointers are
// to the first element; a null pointer means "absent".
template <typename F>
struct FwdArgs {
    const void* xs;      // [T, M] input current
    const void* x2;      // [T, M] second drive (recurrent input), or null
    const void* v0;      // [M] initial state
    const void* i0;      // [M], null for the encoder (no synaptic current)
    const void* a0;      // [M]
    void* spikes;        // [T, M], type O
    void* last_v;        // [M] final state
    void* last_i;        // [M], unused for the encoder
    void* last_a;        // [M]
    void* rec_v;         // [T, M] post-step states, or null (no recording)
    void* rec_i;
    void* rec_a;
    const F* coefs;      // [11, NP] per-neuron parameters, or null (then `c`)
    unsigned long long t;
    unsigned long long m;
    unsigned long long np;  // neurons per batch row: neuron k has parameters k % NP
    AdexCoef<F> c;
};

template <typename F>
struct BwdArgs {
    const void* xs;      // [T, M]
    const void* x2;      // [T, M] or null
    const void* v0;      // [M]
    const void* i0;      // [M] or null (encoder)
    const void* a0;      // [M]
    const void* g_spikes;  // [T, M]
    const void* g_last_v;  // [M]
    const void* g_last_i;  // [M] (feed-forward only)
    const void* g_last_a;  // [M]
    const void* g_rec_v;   // [T, M] or null (no recording)
    const void* g_rec_i;
    const void* g_rec_a;
    void* g_xs;          // [T, M]
    void* g0_v;          // [M]
    void* g0_i;          // [M] (feed-forward only)
    void* g0_a;          // [M]
    F* ckpt;             // [(ceil(T/SEG) - 1) * 3, M] scratch, or null when T <= SEG
    const F* coefs;      // [11, NP] or null
    unsigned long long t;
    unsigned long long m;
    unsigned long long np;
    int method;
    int pad;
    F alpha;
    AdexCoef<F> c;
};

template <typename F>
__device__ __forceinline__ AdexCoef<F> coef_of(const F* coefs, AdexCoef<F> c, size_t n,
                                               size_t np) {
    if (coefs == nullptr) return c;
    const F* p = coefs + n % np;
    AdexCoef<F> r = {p[0],      p[np],     p[2 * np], p[3 * np], p[4 * np], p[5 * np],
                     p[6 * np], p[7 * np], p[8 * np], p[9 * np], p[10 * np]};
    return r;
}

// One step of a thread's neuron driven by i_jump: advances (v, i, a) and returns the spike.
template <typename F>
__device__ __forceinline__ F advance(const AdexCoef<F>& c, bool syn, F i_jump, F& v, F& i,
                                     F& a) {
    const AdexStep<F> s = adex_update(c, v, i_jump, a);
    if (syn) i = adex_synapse(c, i_jump);
    v = s.v;
    a = s.a;
    return s.z;
}

// ---------------------------------------------------------------- forward

// Steps loaded ahead of their compute (memory-level parallelism per thread).
#define ADEX_UNROLL 4
#define ADEX_BLOCK 128

template <typename E, typename O>
__device__ __forceinline__ void adex_fwd(const FwdArgs<typename Io<E>::F>& args) {
    typedef typename Io<E>::F F;
    const size_t m = args.m, steps = args.t;
    const size_t n = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= m) return;
    const AdexCoef<F> c = coef_of(args.coefs, args.c, n, args.np);
    const E* __restrict__ xs = (const E*)args.xs;
    const E* __restrict__ x2s = (const E*)args.x2;
    const bool syn = args.i0 != nullptr, has_x2 = x2s != nullptr, rec = args.rec_v != nullptr;
    O* __restrict__ spikes = (O*)args.spikes;
    F v = Io<E>::load((const E*)args.v0 + n);
    F i = syn ? Io<E>::load((const E*)args.i0 + n) : F(0);
    F a = Io<E>::load((const E*)args.a0 + n);
    // `row` is the offset of this thread's element in row t0; rows are `m` apart.
    for (size_t t0 = 0, row = n; t0 < steps; t0 += ADEX_UNROLL, row += ADEX_UNROLL * m) {
        F x[ADEX_UNROLL], x2[ADEX_UNROLL];
#pragma unroll
        for (int k = 0; k < ADEX_UNROLL; ++k) {
            const size_t at = row + k * m;
            const bool in = t0 + k < steps;
            x[k] = in ? Io<E>::load(xs + at) : F(0);
            x2[k] = in && has_x2 ? Io<E>::load(x2s + at) : F(0);
        }
#pragma unroll
        for (int k = 0; k < ADEX_UNROLL; ++k) {
            if (t0 + k >= steps) break;
            const size_t at = row + k * m;
            const F z = advance(c, syn, adex_jump(syn, has_x2, i, x[k], x2[k]), v, i, a);
            spikes[at] = Io<O>::from(z);
            if (rec) {
                ((E*)args.rec_v)[at] = Io<E>::from(v);
                if (syn) ((E*)args.rec_i)[at] = Io<E>::from(i);
                ((E*)args.rec_a)[at] = Io<E>::from(a);
            }
        }
    }
    ((E*)args.last_v)[n] = Io<E>::from(v);
    if (syn) ((E*)args.last_i)[n] = Io<E>::from(i);
    ((E*)args.last_a)[n] = Io<E>::from(a);
}

// ---------------------------------------------------------------- backward

// Steps per checkpoint segment: the pre-step states of one segment live in registers.
#define ADEX_SEG 16

template <typename E, int METHOD>
__device__ __forceinline__ void adex_bwd(const BwdArgs<typename Io<E>::F>& args) {
    typedef typename Io<E>::F F;
    const size_t m = args.m, steps = args.t;
    const size_t n = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= m) return;
    const AdexCoef<F> c = coef_of(args.coefs, args.c, n, args.np);
    const E* __restrict__ xs = (const E*)args.xs;
    const E* __restrict__ x2s = (const E*)args.x2;
    const bool syn = args.i0 != nullptr, has_x2 = x2s != nullptr, rec = args.g_rec_v != nullptr;
    const F v0 = Io<E>::load((const E*)args.v0 + n);
    const F i0 = syn ? Io<E>::load((const E*)args.i0 + n) : F(0);
    const F a0 = Io<E>::load((const E*)args.a0 + n);
    const size_t nseg = steps == 0 ? 1 : (steps + ADEX_SEG - 1) / ADEX_SEG;
    // Pass 1: the pre-step state at the start of every segment but the first.
    {
        F v = v0, i = i0, a = a0;
        for (size_t t = 0; t < (nseg - 1) * ADEX_SEG; ++t) {
            const size_t at = t * m + n;
            advance(c, syn,
                    adex_jump(syn, has_x2, i, Io<E>::load(xs + at),
                              has_x2 ? Io<E>::load(x2s + at) : F(0)),
                    v, i, a);
            if ((t + 1) % ADEX_SEG == 0) {
                F* ck = args.ckpt + ((t + 1) / ADEX_SEG - 1) * 3 * m + n;
                ck[0] = v;
                ck[m] = i;
                ck[2 * m] = a;
            }
        }
    }
    // Pass 2: segments in reverse; each recomputed forward into registers, then walked back.
    F gv = Io<E>::load((const E*)args.g_last_v + n);
    F gi = syn ? Io<E>::load((const E*)args.g_last_i + n) : F(0);
    F ga = Io<E>::load((const E*)args.g_last_a + n);
    E* __restrict__ g_xs = (E*)args.g_xs;
    for (size_t s = nseg; s-- > 0;) {
        const size_t t0 = s * ADEX_SEG;
        F v = v0, i = i0, a = a0;
        if (s > 0) {
            const F* ck = args.ckpt + (s - 1) * 3 * m + n;
            v = ck[0];
            i = ck[m];
            a = ck[2 * m];
        }
        F pv[ADEX_SEG], pj[ADEX_SEG], pa[ADEX_SEG];
#pragma unroll
        for (int k = 0; k < ADEX_SEG; ++k) {
            pv[k] = v;
            pj[k] = F(0);
            pa[k] = a;
            if (t0 + k < steps) {
                const size_t at = (t0 + k) * m + n;
                const F i_jump = adex_jump(syn, has_x2, i, Io<E>::load(xs + at),
                                           has_x2 ? Io<E>::load(x2s + at) : F(0));
                pj[k] = i_jump;
                advance(c, syn, i_jump, v, i, a);
            }
        }
#pragma unroll
        for (int k = ADEX_SEG - 1; k >= 0; --k) {
            if (t0 + k < steps) {
                const size_t at = (t0 + k) * m + n;
                if (rec) {
                    gv += Io<E>::load((const E*)args.g_rec_v + at);
                    if (syn) gi += Io<E>::load((const E*)args.g_rec_i + at);
                    ga += Io<E>::load((const E*)args.g_rec_a + at);
                }
                const F gz = Io<E>::load((const E*)args.g_spikes + at);
                const AdexGrad<F> g = adex_update_backward(c, METHOD, args.alpha, pv[k],
                                                           pj[k], pa[k], gz, gv, gi, ga);
                g_xs[at] = Io<E>::from(g.i_jump);
                gv = g.v;
                ga = g.a;
                if (syn) gi = g.i_jump;
            }
        }
    }
    ((E*)args.g0_v)[n] = Io<E>::from(gv);
    if (syn) ((E*)args.g0_i)[n] = Io<E>::from(gi);
    ((E*)args.g0_a)[n] = Io<E>::from(ga);
}

// ---------------------------------------------------------------- entry points

#define ADEX_FWD(NAME, E, O)                                                          \
    extern "C" __global__ void __launch_bounds__(ADEX_BLOCK)                          \
        NAME(const FwdArgs<Io<E>::F> args) {                                          \
        adex_fwd<E, O>(args);                                                         \
    }

ADEX_FWD(adex_fwd_f32_f32, float, float)
ADEX_FWD(adex_fwd_f32_u8, float, uint8_t)
ADEX_FWD(adex_fwd_f64_f64, double, double)
ADEX_FWD(adex_fwd_f64_u8, double, uint8_t)
#ifndef ADEX_HOST_EMULATION
ADEX_FWD(adex_fwd_f16_f16, __half, __half)
ADEX_FWD(adex_fwd_f16_u8, __half, uint8_t)
ADEX_FWD(adex_fwd_bf16_bf16, __nv_bfloat16, __nv_bfloat16)
ADEX_FWD(adex_fwd_bf16_u8, __nv_bfloat16, uint8_t)
#endif

// One backward kernel per dtype and surrogate method (the method a compile-time constant, so
// each kernel holds only its own surrogate): adex_bwd_<dtype>_<method number>.
#define ADEX_BWD(NAME, E, METHOD)                                                     \
    extern "C" __global__ void __launch_bounds__(ADEX_BLOCK)                          \
        NAME(const BwdArgs<Io<E>::F> args) {                                          \
        adex_bwd<E, METHOD>(args);                                                    \
    }
#define ADEX_BWD_ALL(NAME, E)          \
    ADEX_BWD(NAME##_0, E, ADEX_SUPER)     \
    ADEX_BWD(NAME##_1, E, ADEX_TRIANGLE)  \
    ADEX_BWD(NAME##_2, E, ADEX_TANH)      \
    ADEX_BWD(NAME##_3, E, ADEX_CIRC)      \
    ADEX_BWD(NAME##_4, E, ADEX_HEAVI_ERFC) \
    ADEX_BWD(NAME##_5, E, ADEX_HEAVISIDE)

ADEX_BWD_ALL(adex_bwd_f32, float)
ADEX_BWD_ALL(adex_bwd_f64, double)
#ifndef ADEX_HOST_EMULATION
ADEX_BWD_ALL(adex_bwd_f16, __half)
ADEX_BWD_ALL(adex_bwd_bf16, __nv_bfloat16)
#endif

extern "C" __global__ void adex_poison_u8(uint8_t* p, unsigned long long len) {
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < len;
         k += (size_t)gridDim.x * blockDim.x) {
        p[k] = 0xff;
    }
}
