// The shared half of the host emulations of the GPU kernels (adex_cuda_emu.cpp,
// adex_metal_emu.cpp; src/fused/header_check.rs runs both): random cases, and plain loops over
// the math header that store the whole trajectory (forward) and walk it back (backward), with
// which the emulated kernels must agree bit for bit. E is the storage type (inputs are rounded
// through it, outputs stored in it), F the compute type.
#ifndef ADEX_EMU_H
#define ADEX_EMU_H
#include <cstdint>
#include <cstdio>
#include <vector>

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform(double lo, double hi) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    double u = (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
    return lo + (hi - lo) * u;
}

static int failures = 0;

// Steps covered by the cases: none, one, around the checkpoint segment (16) and long.
static const size_t EMU_STEPS[] = {0, 1, 15, 16, 17, 40, 301};

template <typename F, typename E = F>
struct EmuCase {
    size_t T, M, NP;
    bool syn, has_x2, record, per;
    int method;
    F alpha;
    char ctx[160];
    // Inputs (already rounded through E), in F.
    std::vector<F> coefs, xs, x2, st, gsp, glast, grec;
    // The plain loops' results, rounded through E.
    std::vector<F> z, last, rec, gx, g0;

    static F round(F x) { return (F)(E)x; }

    AdexCoef<F> coef(size_t n) const {
        size_t j = n % NP;
        AdexCoef<F> c = {coefs[j],          coefs[NP + j],     coefs[2 * NP + j],
                         coefs[3 * NP + j], coefs[4 * NP + j], coefs[5 * NP + j],
                         coefs[6 * NP + j], coefs[7 * NP + j], coefs[8 * NP + j],
                         coefs[9 * NP + j], coefs[10 * NP + j]};
        return c;
    }

    // `flags`: bit 0 feed-forward (else encoder), 1 second drive, 2 record, 3 per-neuron.
    EmuCase(size_t steps, int flags, const char* dtype)
        : T(steps),
          M(1 + (size_t)uniform(0, 300)),
          syn(flags & 1),
          has_x2(syn && (flags & 2)),
          record(flags & 4),
          per(flags & 8),
          method((int)(steps + flags) % 6) {
        std::snprintf(ctx, sizeof ctx, "%s T=%zu M=%zu syn=%d x2=%d record=%d per=%d method=%d",
                      dtype, T, M, syn, has_x2, record, per, method);
        NP = per ? M / 2 + 1 : 1;  // per-neuron parameters repeat every NP neurons
        coefs.resize(11 * NP);
        for (size_t n = 0; n < NP; ++n) {
            F dt = (F)uniform(0.3, 1.0), vth = (F)uniform(0.8, 1.2);
            F c[11] = {(F)uniform(-0.1, 0.1), vth, n % 2 ? vth : (F)uniform(1.2, 3.0),
                       (F)uniform(-0.2, 0.1), dt, F(1) / dt, (F)uniform(0, 4), (F)uniform(0, 0.3),
                       (F)uniform(0.05, 0.2), (F)uniform(0.1, 0.3), (F)uniform(0.0, 0.1)};
            for (int k = 0; k < 11; ++k) coefs[k * NP + n] = c[k];
        }
        xs.resize(T * M), x2.resize(T * M), st.resize(3 * M), gsp.resize(T * M);
        glast.resize(3 * M), grec.resize(3 * T * M);
        for (auto& x : xs) x = round((F)(uniform(0, 1) < 0.1 ? uniform(0, 40) : uniform(-0.5, 2.5)));
        for (auto& x : x2) x = round((F)uniform(-0.5, 0.5));
        for (auto& x : st) x = round((F)uniform(-0.5, 0.9));
        for (auto& x : gsp) x = round((F)uniform(-1, 1));
        for (auto& x : glast) x = round((F)uniform(-1, 1));
        for (auto& x : grec) x = round((F)uniform(-1, 1));
        alpha = (F)uniform(2, 50);
        plain();
    }

    void plain() {
        z.assign(T * M, F(0)), last.assign(3 * M, F(0)), rec.assign(3 * T * M, F(0));
        gx.assign(T * M, F(0)), g0.assign(3 * M, F(0));
        std::vector<F> pv(T * M), pj(T * M), pa(T * M);
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
                rec[at] = round(v);
                rec[T * M + at] = round(i);
                rec[2 * T * M + at] = round(a);
            }
            last[n] = round(v);
            last[M + n] = round(i);
            last[2 * M + n] = round(a);
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
                gx[at] = round(g.i_jump);
                gv = g.v;
                ga = g.a;
                if (syn) gi = g.i_jump;
            }
            g0[n] = round(gv);
            g0[M + n] = round(gi);
            g0[2 * M + n] = round(ga);
        }
    }

    // Steps per checkpoint segment `seg`: the kernels' scratch length (at least 1).
    size_t ckpt_len(size_t seg) const {
        size_t nseg = T == 0 ? 1 : (T + seg - 1) / seg;
        return (nseg - 1) * 3 * M + 1;
    }

    void expect(const char* what, const std::vector<F>& got, const std::vector<F>& want) const {
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

    // Compares the kernels' outputs (in F) with the plain loops'. The encoder has no i: its
    // slots are neither written by the kernels nor compared.
    void compare(const std::vector<F>& kz, std::vector<F> klast, std::vector<F> krec,
                 const std::vector<F>& kgx, std::vector<F> kg0) const {
        expect("spikes", kz, z);
        if (!syn) {
            for (size_t n = 0; n < M; ++n) {
                klast[M + n] = last[M + n];
                kg0[M + n] = g0[M + n];
            }
            for (size_t k = 0; k < T * M; ++k) krec[T * M + k] = rec[T * M + k];
        }
        expect("final state", klast, last);
        if (record) expect("recorded", krec, rec);
        expect("input gradient", kgx, gx);
        expect("initial-state gradient", kg0, g0);
    }
};

#endif  // ADEX_EMU_H
