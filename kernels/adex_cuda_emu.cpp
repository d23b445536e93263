// Host emulation of the CUDA kernels (src/fused/header_check.rs runs it): adex.cu compiled as
// C++ with the CUDA words defined away, each kernel run thread by thread on the CPU, and its
// results compared with a plain loop over the same header functions that stores the whole
// trajectory (forward) and walks it back (backward). This checks what the header check cannot:
// the kernels' indexing, the record/final-state slots, the second drive, per-neuron parameters
// and the backward's checkpointed segments, for f32 and f64. Exit status 0 when all agree
// bit for bit; each mismatch is printed.
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

#include "adex_emu.h"

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
static void check(const EmuCase<F>& e, void (*fwd)(FwdArgs<F>), void (*bwd)(BwdArgs<F>)) {
    const size_t T = e.T, M = e.M;
    std::vector<F> xs = e.xs, x2 = e.x2, st = e.st, gsp = e.gsp, glast = e.glast, grec = e.grec,
                   coefs = e.coefs;
    // The kernels, outputs poisoned with NaN.
    const F nan = F(0) / F(0);
    std::vector<F> kz(T * M, nan), klast(3 * M, nan), krec(3 * T * M, nan), kgx(T * M, nan),
        kg0(3 * M, nan), ckpt(e.ckpt_len(ADEX_SEG), nan);
    const bool syn = e.syn, record = e.record, many = ckpt.size() > 1;
    FwdArgs<F> fa = {xs.data(), e.has_x2 ? x2.data() : nullptr, st.data(),
                     syn ? st.data() + M : nullptr, st.data() + 2 * M, kz.data(),
                     klast.data(), klast.data() + M, klast.data() + 2 * M,
                     record ? krec.data() : nullptr, krec.data() + T * M,
                     krec.data() + 2 * T * M, e.per ? coefs.data() : nullptr, T, M, e.NP,
                     e.coef(0)};
    launch([&] { fwd(fa); }, M);
    BwdArgs<F> ba = {xs.data(), e.has_x2 ? x2.data() : nullptr, st.data(),
                     syn ? st.data() + M : nullptr, st.data() + 2 * M, gsp.data(), glast.data(),
                     glast.data() + M, glast.data() + 2 * M, record ? grec.data() : nullptr,
                     grec.data() + T * M, grec.data() + 2 * T * M, kgx.data(), kg0.data(),
                     kg0.data() + M, kg0.data() + 2 * M, many ? ckpt.data() : nullptr,
                     e.per ? coefs.data() : nullptr, T, M, e.NP, e.method, 0, e.alpha,
                     e.coef(0)};
    launch([&] { bwd(ba); }, M);
    e.compare(kz, klast, krec, kgx, kg0);
}

int main() {
    void (*b32[6])(BwdArgs<float>) = {adex_bwd_f32_0, adex_bwd_f32_1, adex_bwd_f32_2,
                                      adex_bwd_f32_3, adex_bwd_f32_4, adex_bwd_f32_5};
    void (*b64[6])(BwdArgs<double>) = {adex_bwd_f64_0, adex_bwd_f64_1, adex_bwd_f64_2,
                                       adex_bwd_f64_3, adex_bwd_f64_4, adex_bwd_f64_5};
    int cases = 0;
    for (size_t T : EMU_STEPS)
        for (int flags = 0; flags < 16; ++flags) {
            EmuCase<float> c32(T, flags, "f32");
            check<float>(c32, adex_fwd_f32_f32, b32[c32.method]);
            EmuCase<double> c64(T, flags, "f64");
            check<double>(c64, adex_fwd_f64_f64, b64[c64.method]);
            cases += 2;
        }
    std::printf("%d cases, %d mismatches\n", cases, failures);
    return failures == 0 ? 0 : 1;
}
