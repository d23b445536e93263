// Host driver for the CPU check of the shared math header (src/fused/header_check.rs): compiles
// adex_math.h as plain C++ (or, with __METAL_VERSION__ defined and kernels/metal_host on the
// include path, its Metal branch, f32 only) and evaluates it on the records read from stdin,
// one per line:
//
//   bits method alpha c[0..11] v i a x x2 syn has_x2 gz gv gi ga
//
// `bits` is 32 or 64 (the precision); every float is given as its bit pattern in decimal. For each
// record it prints, as bit patterns: z v_new i_new a_new g_ijump g_v g_a surrogate(v) exp(x)
// tape_e (the membrane's exponential term as the backward's tape holds it, -1 where capped).
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "adex_math.h"

template <typename F, typename U>
static F from_bits(U u) {
    F f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

template <typename F, typename U>
static U to_bits(F f) {
    U u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

template <typename F, typename U>
static bool run(int method) {
    unsigned long long raw[23];
    for (unsigned long long& r : raw) {
        if (std::scanf("%llu", &r) != 1) return false;
    }
    F f[23];
    for (int k = 0; k < 23; ++k) f[k] = from_bits<F, U>((U)raw[k]);
    F alpha = f[0];
    AdexCoef<F> c = {f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11]};
    F v = f[12], i = f[13], a = f[14], x = f[15], x2 = f[16];
    bool syn = raw[17] != 0, has_x2 = raw[18] != 0;
    F gz = f[19], gv = f[20], gi = f[21], ga = f[22];
    F i_jump = adex_jump(syn, has_x2, i, x, x2);
    AdexStep<F> s = adex_update(c, v, i_jump, a);
    F i_new = syn ? adex_synapse(c, i_jump) : i;
    AdexGrad<F> g = adex_update_backward(c, method, alpha, v, i_jump, a, gz, gv, gi, ga);
    AdexMembrane<F> m = adex_membrane(c, v, i_jump, a);
    F out[10] = {s.z, s.v, i_new, s.a, g.i_jump, g.v, g.a, adex_surrogate(method, alpha, v),
                 adex_exp(x), m.capped ? (F)-1 : m.e};
    for (int k = 0; k < 10; ++k) {
        std::printf("%llu%c", (unsigned long long)to_bits<F, U>(out[k]), k == 9 ? '\n' : ' ');
    }
    return true;
}

int main() {
    int bits, method;
    while (std::scanf("%d %d", &bits, &method) == 2) {
        bool ok;
        if (bits == 32) {
            ok = run<float, uint32_t>(method);
        } else {
#if ADEX_HAS_F64
            ok = run<double, uint64_t>(method);
#else
            std::fprintf(stderr, "adex_host_check: this language (Metal) has no f64\n");
            return 1;
#endif
        }
        if (!ok) {
            std::fprintf(stderr, "adex_host_check: malformed record\n");
            return 1;
        }
    }
    return 0;
}
