// Host emulation of the CUDA kernels (src/fused/header_check.rs runs it): adex.cu compiled as
// C++ with the CUDA words defined away, each kernel run thread by thread on the CPU, and its
// results compared with a plain loop over the same header functions that stores the whole
// trajectory (forward) and walks it back (backward). This checks what the header check cannot:
// the kernels' indexing, the record/final-state slots, the second drive, per-neuron parameters
// and the backward's checkpointed segments, for f32 and f64. Exit status 0 when all agree
// bit for bit; each mismatch is printed.
#include <cstdint>
#include <cstdio>
#include <vector>

struct AdexDim3 {
    unsigned x, y, z;
};
static AdexDim3 blockIdx, blockDim, threadIdx, gridDim;
#define ADEX_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
template <typename T>
static T __ldg(const T* p) {
    return *p;
}
#include "adex.cu"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform(double lo, double hi) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    double u = (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
    return lo + (hi - lo) * u;
}

static int failures = 0;
template <typename F>
static void expect(const char* what, const std::vector<F>& got, const std::vector<F>& want,
                   const char* ctx) {
    for (size_t k = 0; k < want.size(); ++k) {
        bool same = got[k] == want[k] || (got[k] != got[k] && want[k] != want[k]);
        if (!same) {
            if (failures < 20)
                std::printf("%s: %s[%zu] kernel %.17g vs plain %.17g\n", ctx, what, k,
                            (double)got[k], (double)want[k]);
            ++failures;
            return;
        }
    }
}

template <typename K>
static void launch(K kernel, size_t m) {
    blockDim = {ADEX_BLOCK, 1, 1};
    for (unsigned b = 0; b * ADEX_BLOCK < m + ADEX_BLOCK; ++b)
        for (unsigned t = 0; t < ADEX_BLOCK; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            kernel();
        }
}

template <typename F>
static void check(size_t T, size_t M, bool syn, bool has_x2, bool record, bool per, int method,
                  void (*fwd)(FwdArgs<F>), void (*bwd)(BwdArgs<F>)) {
    char ctx[160];
    std::snprintf(ctx, sizeof ctx, "f%d T=%zu M=%zu syn=%d x2=%d record=%d per=%d method=%d",
                  (int)(8 * sizeof(F)), T, M, syn, has_x2, record, per, method);
    const size_t NP = per ? M / 2 + 1 : 1;  // per-neuron parameters repeat every NP neurons
    std::vector<F> coefs(11 * NP);
    for (size_t n = 0; n < NP; ++n) {
        F dt = (F)uniform(0.3, 1.0), vth = (F)uniform(0.8, 1.2);
        F c[11] = {(F)uniform(-0.1, 0.1), vth, n % 2 ? vth : (F)uniform(1.2, 3.0),
                   (F)uniform(-0.2, 0.1), dt, F(1) / dt, (F)uniform(0, 4), (F)uniform(0, 0.3),
                   (F)uniform(0.05, 0.2), (F)uniform(0.1, 0.3), (F)uniform(0.0, 0.1)};
        for (int k = 0; k < 11; ++k) coefs[k * NP + n] = c[k];
    }
    auto coef = [&](size_t n) {
        size_t j = n % NP;
        AdexCoef<F> c = {coefs[j], coefs[NP + j], coefs[2 * NP + j], coefs[3 * NP + j],
                         coefs[4 * NP + j], coefs[5 * NP + j], coefs[6 * NP + j],
                         coefs[7 * NP + j], coefs[8 * NP + j], coefs[9 * NP + j],
                         coefs[10 * NP + j]};
        return c;
    };
    std::vector<F> xs(T * M), x2(T * M), st(3 * M), gsp(T * M), glast(3 * M), grec(3 * T * M);
    for (auto& x : xs) x = (F)(uniform(0, 1) < 0.1 ? uniform(0, 40) : uniform(-0.5, 2.5));
    for (auto& x : x2) x = (F)uniform(-0.5, 0.5);
    for (auto& x : st) x = (F)uniform(-0.5, 0.9);
    for (auto& x : gsp) x = (F)uniform(-1, 1);
    for (auto& x : glast) x = (F)uniform(-1, 1);
    for (auto& x : grec) x = (F)uniform(-1, 1);
    const F alpha = (F)uniform(2, 50);
    // The plain loops.
    std::vector<F> z(T * M), last(3 * M), rec(3 * T * M), pv(T * M), pj(T * M), pa(T * M);
    std::vector<F> gx(T * M), g0(3 * M);
    for (size_t n = 0; n < M; ++n) {
        AdexCoef<F> c = coef(n);
        F v = st[n], i = syn ? st[M + n] : F(0), a = st[2 * M + n];
        for (size_t t = 0; t < T; ++t) {
            size_t at = t * M + n;
            F j = adex_jump(syn, has_x2, i, xs[at], has_x2 ? x2[at] : F(0));
            pv[at] = v;
            pj[at] = j;
            pa[at] = a;
            AdexStep<F> s = adex_update(c, v, j, a);
            if (syn) i = adex_synapse(c, j);
            v = s.v;
            a = s.a;
            z[at] = s.z;
            rec[at] = v;
            rec[T * M + at] = i;
            rec[2 * T * M + at] = a;
        }
        last[n] = v;
        last[M + n] = i;
        last[2 * M + n] = a;
        F gv = glast[n], gi = syn ? glast[M + n] : F(0), ga = glast[2 * M + n];
        for (size_t t = T; t-- > 0;) {
            size_t at = t * M + n;
            if (record) {
                gv += grec[at];
                if (syn) gi += grec[T * M + at];
                ga += grec[2 * T * M + at];
            }
            AdexGrad<F> g = adex_update_backward(c, method, alpha, pv[at], pj[at], pa[at],
                                                 gsp[at], gv, gi, ga);
            gx[at] = g.i_jump;
            gv = g.v;
            ga = g.a;
            if (syn) gi = g.i_jump;
        }
        g0[n] = gv;
        g0[M + n] = gi;
        g0[2 * M + n] = ga;
    }
    // The kernels, outputs poisoned with NaN.
    const F nan = F(0) / F(0);
    std::vector<F> kz(T * M, nan), klast(3 * M, nan), krec(3 * T * M, nan), kgx(T * M, nan),
        kg0(3 * M, nan);
    size_t nseg = T == 0 ? 1 : (T + ADEX_SEG - 1) / ADEX_SEG;
    std::vector<F> ckpt((nseg - 1) * 3 * M + 1, nan);
    AdexCoef<F> c0 = coef(0);
    FwdArgs<F> fa = {xs.data(), has_x2 ? x2.data() : nullptr, st.data(),
                     syn ? st.data() + M : nullptr, st.data() + 2 * M, kz.data(),
                     klast.data(), klast.data() + M, klast.data() + 2 * M,
                     record ? krec.data() : nullptr, krec.data() + T * M,
                     krec.data() + 2 * T * M, per ? coefs.data() : nullptr, T, M, NP, c0};
    launch([&] { fwd(fa); }, M);
    BwdArgs<F> ba = {xs.data(), has_x2 ? x2.data() : nullptr, st.data(),
                     syn ? st.data() + M : nullptr, st.data() + 2 * M, gsp.data(), glast.data(),
                     glast.data() + M, glast.data() + 2 * M, record ? grec.data() : nullptr,
                     grec.data() + T * M, grec.data() + 2 * T * M, kgx.data(), kg0.data(),
                     kg0.data() + M, kg0.data() + 2 * M, nseg > 1 ? ckpt.data() : nullptr,
                     per ? coefs.data() : nullptr, T, M, NP, method, 0, alpha, c0};
    launch([&] { bwd(ba); }, M);
    if (!per) {
        // Scalar parameters: the plain loops used coef(n) == c0 for every n only when NP == 1.
    }
    expect("spikes", kz, z, ctx);
    std::vector<F> want_last = last, want_g0 = g0;
    if (!syn) {  // the encoder has no i: its slots are neither written nor compared
        for (size_t n = 0; n < M; ++n) {
            klast[M + n] = want_last[M + n];
            kg0[M + n] = want_g0[M + n];
        }
    }
    expect("final state", klast, want_last, ctx);
    if (record) {
        if (!syn)
            for (size_t k = 0; k < T * M; ++k) krec[T * M + k] = rec[T * M + k];
        expect("recorded", krec, rec, ctx);
    }
    expect("input gradient", kgx, gx, ctx);
    expect("initial-state gradient", kg0, want_g0, ctx);
}

int main() {
    const size_t steps[] = {0, 1, 15, 16, 17, 40, 301};
    int cases = 0;
    for (size_t T : steps)
        for (int flags = 0; flags < 16; ++flags) {
            bool syn = flags & 1, has_x2 = syn && (flags & 2), record = flags & 4, per = flags & 8;
            int method = (int)(T + flags) % 6;
            size_t M = 1 + (size_t)uniform(0, 300);
            void (*b32[6])(BwdArgs<float>) = {adex_bwd_f32_0, adex_bwd_f32_1, adex_bwd_f32_2,
                                              adex_bwd_f32_3, adex_bwd_f32_4, adex_bwd_f32_5};
            void (*b64[6])(BwdArgs<double>) = {adex_bwd_f64_0, adex_bwd_f64_1, adex_bwd_f64_2,
                                               adex_bwd_f64_3, adex_bwd_f64_4, adex_bwd_f64_5};
            check<float>(T, M, syn, has_x2, record, per, method, adex_fwd_f32_f32, b32[method]);
            check<double>(T, M, syn, has_x2, record, per, method, adex_fwd_f64_f64,
                          b64[method]);
            cases += 2;
        }
    std::printf("%d cases, %d mismatches\n", cases, failures);
    return failures == 0 ? 0 : 1;
}
