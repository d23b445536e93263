// The AdEx update, its backward and the six surrogate derivatives for the GPU languages: the one
// definition that the CUDA kernels (adex.cu) and the Metal kernels (adex.metal) include. It
// mirrors the Rust CPU definition in src/fused/math.rs operation by operation (same order, the
// same explicit fused multiply-adds, the same polynomial exp for f32), so the three agree to the
// last bit where the compilers do not contract other products into FMAs (nvcc: -fmad=false; the
// host check: -ffp-contract=off). tests: src/fused/header_check.rs compiles this header as C++ on
// the CPU and holds it to the Rust kernel bit for bit.
//
// Language words behind macros:
//   ADEX_FN              qualifiers of a device function
//   adex_f32_from_bits   reinterpret a 32-bit integer as a float
// Everything else is the common subset of C++ (CUDA), the Metal Shading Language and C++17.
#ifndef ADEX_MATH_H
#define ADEX_MATH_H

#if defined(__CUDACC__)
#define ADEX_FN __device__ __forceinline__
#define ADEX_HAS_F64 1
ADEX_FN float adex_f32_from_bits(unsigned int u) { return __uint_as_float(u); }
ADEX_FN unsigned int adex_f32_to_bits(float f) { return __float_as_uint(f); }
#elif defined(__METAL_VERSION__)
#include <metal_stdlib>
using namespace metal;
#define ADEX_FN inline
#define ADEX_HAS_F64 0
ADEX_FN float adex_f32_from_bits(uint u) { return as_type<float>(u); }
ADEX_FN uint adex_f32_to_bits(float f) { return as_type<uint>(f); }
#else  // host C++ (the CPU check)
#include <cmath>
#include <cstring>
#define ADEX_FN static inline
#define ADEX_HAS_F64 1
ADEX_FN float adex_f32_from_bits(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
ADEX_FN unsigned int adex_f32_to_bits(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
using std::exp;
using std::exp2;
using std::rint;
using std::fabs;
using std::fma;
using std::sqrt;
#endif

// ---------------------------------------------------------------- precision-specific pieces

// 2^x as p*s (s = 2^n, a power of two; see adex_exp2_parts).
template <typename F>
struct AdexPow2 {
    F p;
    F s;
};

// exp for f32: Cody-Waite reduction by ln 2, Cephes' degree-5 polynomial in Estrin form, 2^n in
// the exponent bits; arguments below -87 raised to -87; about 1 ulp (math.rs: exp_f32).
ADEX_FN float adex_exp(float x) {
    const float shifter = 12582912.0f;  // 1.5 * 2^23
    x = x < -87.0f ? -87.0f : x;
    float t = fma(x, 1.44269504088896340736f, shifter);
    float n = t - shifter;
    float r = fma(n, -0.6933594f, x);
    r = fma(n, 2.1219444e-4f, r);
    float r2 = r * r;
    float p01 = fma(r, 1.6666665e-1f, 0.5f);
    float p23 = fma(r, 8.333452e-3f, 4.1665796e-2f);
    float p45 = fma(r, 1.9875691e-4f, 1.3982e-3f);
    float p = fma(fma(p45, r2, p23), r2, p01);
    float y = fma(p, r2, r) + 1.0f;
    return y * adex_f32_from_bits((adex_f32_to_bits(t) + 127u) << 23);
}
// 2^x for f32 as (p, s), 2^x = p*s: s = 2^n for the integer n nearest x (the exponent bits),
// p = 2^f = 1 + f*q(f) for f = x - n in [-1/2, 1/2], q Cephes' degree-5 exp2f polynomial in
// Estrin form; arguments below -100 raised to -100 (math.rs: exp2_parts_f32, EXP2_FLOOR).
ADEX_FN AdexPow2<float> adex_exp2_parts(float x) {
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    x = x < -100.0f ? -100.0f : x;
    float n = rint(x);  // ties to even, as the shifter would round
    float t = n + shifter;
    float f = x - n;
    float f2 = f * f;
    float q01 = fma(f, 2.4022648e-1f, 6.931472e-1f);
    float q23 = fma(f, 9.618437e-3f, 5.5503325e-2f);
    float q45 = fma(f, 1.5353362e-4f, 1.3398874e-3f);
    float q = fma(q45, f2 * f2, fma(q23, f2, q01));
    AdexPow2<float> r;
    r.p = fma(q, f, 1.0f);
    r.s = adex_f32_from_bits((adex_f32_to_bits(t) + 127u) << 23);
    return r;
}
// The exp cap 88 in base 2, 88*log2(e) rounded to f32 (math.rs: Real::EXP2_CAP).
ADEX_FN float adex_exp2_cap(float) { return 126.957161f; }
ADEX_FN float adex_abs(float x) { return fabs(x); }
ADEX_FN float adex_sqrt(float x) { return sqrt(x); }
ADEX_FN bool adex_is_finite(float x) { return fabs(x) < INFINITY; }
ADEX_FN float adex_two_over_sqrt_pi(float) { return 1.12837922573089599609f; }

#if ADEX_HAS_F64
// f64 is the validation precision: the platform's exp.
ADEX_FN double adex_exp(double x) { return exp(x); }
ADEX_FN AdexPow2<double> adex_exp2_parts(double x) {
    AdexPow2<double> r;
    r.p = exp2(x);
    r.s = 1.0;
    return r;
}
ADEX_FN double adex_exp2_cap(double) { return 709.0 * 1.4426950408889634; }
ADEX_FN double adex_abs(double x) { return fabs(x); }
ADEX_FN double adex_sqrt(double x) { return sqrt(x); }
ADEX_FN bool adex_is_finite(double x) { return fabs(x) < (double)INFINITY; }
ADEX_FN double adex_two_over_sqrt_pi(double) { return 1.12837916709551257390; }
#endif

// ---------------------------------------------------------------- the model

// The parameters of one neuron in compute precision, the dt products and the membrane's
// base-2 exponent formed on the host (math.rs: Coef; same field order, 11 fields).
template <typename F>
struct AdexCoef {
    F v_leak;
    F x_offset;  // -v_th * x_scale
    F v_spike;   // v_peak when set, else v_th
    F v_reset;
    F c_exp;    // c_mem * delta_T
    F x_scale;  // log2(e) / delta_T
    F a_current;
    F a_spike;
    F c_mem;  // dt * tau_mem_inv
    F c_syn;  // dt * tau_syn_inv
    F c_ada;  // dt * tau_ada_inv
};

// Surrogate methods, in the order of SurrogateMethod::ALL.
#define ADEX_SUPER 0
#define ADEX_TRIANGLE 1
#define ADEX_TANH 2
#define ADEX_CIRC 3
#define ADEX_HEAVI_ERFC 4
#define ADEX_HEAVISIDE 5

template <typename F>
struct AdexMembrane {
    F v_dec;
    F e;
    bool capped;
};

// v_dec = v + dt*tau_mem_inv*((v_leak - v) + delta_T*exp(u) + i_jump - a), u = (v - v_th)/delta_T
// capped at the exp cap, the exponent in base 2 and 2^n folded into c_exp for a short chain
// (math.rs: membrane).
template <typename F>
ADEX_FN AdexMembrane<F> adex_membrane(AdexCoef<F> c, F v, F i_jump, F a) {
    F cap = adex_exp2_cap(v);
    F x = fma(v, c.x_scale, c.x_offset);
    AdexMembrane<F> m;
    m.capped = x > cap;
    AdexPow2<F> e = adex_exp2_parts(m.capped ? cap : x);
    F base = ((c.v_leak - v) + i_jump) - a;
    F w = fma(base, c.c_mem, v);
    m.v_dec = fma(e.p, e.s * c.c_exp, w);
    m.e = e.p * e.s;
    return m;
}

template <typename F>
struct AdexStep {
    F z;
    F v;
    F a;
};

// One update from (v, a) driven by i_jump (math.rs: update).
template <typename F>
ADEX_FN AdexStep<F> adex_update(AdexCoef<F> c, F v, F i_jump, F a) {
    AdexMembrane<F> m = adex_membrane(c, v, i_jump, a);
    F a_dec = a + (c.a_current * (v - c.v_leak) - a) * c.c_ada;
    bool spike = m.v_dec > c.v_spike;
    AdexStep<F> s;
    s.z = spike ? F(1) : F(0);
    s.v = spike ? c.v_reset : m.v_dec;
    s.a = a_dec + s.z * c.a_spike;
    return s;
}

// i_new = i_jump - dt*tau_syn_inv*i_jump (math.rs: synapse).
template <typename F>
ADEX_FN F adex_synapse(AdexCoef<F> c, F i_jump) {
    return i_jump - i_jump * c.c_syn;
}

// The drive of a step: the encoder's input current itself, or the feed-forward neuron's
// synaptic current after the jump, (i + x) (+ x2 with a second drive) (src/fused/cpu/forward.rs: fwd_block).
template <typename F>
ADEX_FN F adex_jump(bool syn, bool has_x2, F i, F x, F x2) {
    if (!syn) return x;
    return has_x2 ? (i + x) + x2 : i + x;
}

// The surrogate pseudo-derivative g(x) (math.rs: surrogate).
template <typename F>
ADEX_FN F adex_surrogate(int method, F alpha, F x) {
    const F one = F(1);
    switch (method) {
        case ADEX_SUPER: {
            F d = alpha * adex_abs(x) + one;
            return one / (d * d);
        }
        case ADEX_TRIANGLE: {
            F r = one - adex_abs(x);
            return alpha * (r > F(0) ? r : F(0));
        }
        case ADEX_TANH: {
            F t = adex_exp(-((one + one) * adex_abs(alpha * x)));
            F d = one + t;
            return (F(4) * t) / (d * d);
        }
        case ADEX_CIRC: {
            F q = alpha * alpha + x * x;
            return (alpha * alpha * alpha) / (q * adex_sqrt(q));
        }
        case ADEX_HEAVI_ERFC: {
            F y = alpha * x;
            return adex_two_over_sqrt_pi(y) * adex_exp(-(y * y));
        }
        default:
            return F(0);
    }
}

template <typename F>
struct AdexGrad {
    F i_jump;
    F v;
    F a;
};

// The backward of one step from the pre-step state (v, i_jump, a) and the gradients of the
// step's outputs z, v_new, i_new, a_new (math.rs: update_backward).
template <typename F>
ADEX_FN AdexGrad<F> adex_update_backward(AdexCoef<F> c, int method, F alpha, F v, F i_jump, F a,
                                         F gz, F gv, F gi, F ga) {
    const F zero = F(0);
    AdexMembrane<F> m = adex_membrane(c, v, i_jump, a);
    F s = m.v_dec - c.v_spike;
    bool spike = s > zero;
    F jump = adex_is_finite(m.v_dec) ? c.v_reset - m.v_dec : zero;
    F gz_total = gz + ga * c.a_spike + gv * jump;
    F g_s = adex_is_finite(s) ? gz_total * adex_surrogate(method, alpha, s) : zero;
    F g_vdec = (spike ? zero : gv) + g_s;
    F g_bracket = g_vdec * c.c_mem;
    F g_exp = m.capped ? zero : g_bracket * m.e;
    F g_ada = ga * c.c_ada;
    AdexGrad<F> g;
    g.i_jump = g_bracket + (gi - gi * c.c_syn);
    g.v = ((g_vdec - g_bracket) + g_exp) + g_ada * c.a_current;
    g.a = (ga - g_ada) - g_bracket;
    return g;
}

#endif  // ADEX_MATH_H
