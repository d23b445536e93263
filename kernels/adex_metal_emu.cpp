// Host emulation of the Metal kernels (src/fused/header_check.rs runs it): adex.metal and the
// Metal branch of adex_math.h (__METAL_VERSION__ defined, <metal_stdlib> from metal_host/)
// compiled as C++17, so that a construct of the header's Metal branch that C++ rejects fails
// here; Metal's address-space words defined away; each kernel entry point called thread by
// thread (past the last neuron too) with its buffers as Metal would bind them (absent ones
// bound to a placeholder, as src/fused/metal.rs does), and its results compared bit for bit
// with plain loops over the same header (adex_emu.h) for f32, f16 and bf16 storage. Exit
// status 0 when all agree; each mismatch is printed.
#define device
#define constant const  // Metal's constant space is read-only
#define thread
#define kernel
#include "adex.metal"

#include "adex_emu.h"

static_assert(sizeof(AdexParams) == 48, "src/fused/metal_abi.rs: Params is 48 bytes");

template <typename E>
using Fwd = void (*)(const E*, const E*, const E*, const E*, const E*, const float*,
                     const AdexParams&, E*, E*, E*, E*, E*, E*, E*, uint);
template <typename E>
using FwdU8 = void (*)(const E*, const E*, const E*, const E*, const E*, const float*,
                       const AdexParams&, uchar*, E*, E*, E*, E*, E*, E*, uint);
template <typename E>
using Bwd = void (*)(const E*, const E*, const E*, const E*, const E*, const float*,
                     const AdexParams&, const E*, const E*, const E*, const E*, const E*,
                     const E*, const E*, E*, E*, E*, E*, float*, uint);

template <typename E>
static std::vector<E> to(const std::vector<float>& v) {
    return std::vector<E>(v.begin(), v.end());
}
template <typename E>
static std::vector<float> back(const std::vector<E>& v) {
    return std::vector<float>(v.begin(), v.end());
}

template <typename E>
static void check(const EmuCase<float, E>& e, Fwd<E> fwd, FwdU8<E> fwd_u8, Bwd<E> bwd) {
    const size_t T = e.T, M = e.M;
    const E nan = E(0.0f / 0.0f);
    std::vector<E> xs = to<E>(e.xs), x2 = to<E>(e.x2), st = to<E>(e.st), gsp = to<E>(e.gsp),
                   glast = to<E>(e.glast), grec = to<E>(e.grec);
    std::vector<float> coefs = e.coefs;
    AdexParams prm = {T, M, e.NP, e.syn, e.has_x2, e.record, (uint)e.method, e.alpha, 0};
    const bool syn = e.syn, record = e.record;
    // Absent buffers bound to a placeholder (the input), as the Rust side does.
    const E* x2p = e.has_x2 ? x2.data() : xs.data();
    const E* i0p = syn ? st.data() + M : xs.data();
    std::vector<E> kz(T * M, nan), klast(3 * M, nan), krec(3 * T * M, nan), kgx(T * M, nan),
        kg0(3 * M, nan), unused(1, nan);
    std::vector<uchar> kz8(T * M, 0xff);
    std::vector<float> ckpt(e.ckpt_len(ADEX_SEG), 0.0f / 0.0f);
    E* li = syn ? klast.data() + M : unused.data();
    E* rv = record ? krec.data() : unused.data();
    E* ri = record && syn ? krec.data() + T * M : unused.data();
    E* ra = record ? krec.data() + 2 * T * M : unused.data();
    for (uint tid = 0; tid < M + 37; ++tid)
        fwd(xs.data(), x2p, st.data(), i0p, st.data() + 2 * M, coefs.data(), prm, kz.data(),
            klast.data(), li, klast.data() + 2 * M, rv, ri, ra, tid);
    // u8 spikes: the same run without recording, spikes 0/1.
    std::vector<E> klast8(3 * M, nan);
    AdexParams prm8 = prm;
    prm8.record = 0;
    for (uint tid = 0; tid < M + 37; ++tid)
        fwd_u8(xs.data(), x2p, st.data(), i0p, st.data() + 2 * M, coefs.data(), prm8, kz8.data(),
               klast8.data(), syn ? klast8.data() + M : unused.data(), klast8.data() + 2 * M,
               unused.data(), unused.data(), unused.data(), tid);
    const E* gi = syn ? glast.data() + M : glast.data();
    const E* gri = record && syn ? grec.data() + T * M : grec.data();
    for (uint tid = 0; tid < M + 37; ++tid)
        bwd(xs.data(), x2p, st.data(), i0p, st.data() + 2 * M, coefs.data(), prm, gsp.data(),
            glast.data(), gi, glast.data() + 2 * M, grec.data(), gri, grec.data() + 2 * T * M,
            kgx.data(), kg0.data(), syn ? kg0.data() + M : unused.data(), kg0.data() + 2 * M,
            ckpt.data(), tid);
    e.compare(back(kz), back(klast), back(krec), back(kgx), back(kg0));
    std::vector<float> z8(kz8.begin(), kz8.end());
    e.expect("u8 spikes", z8, e.z);
    std::vector<float> l8 = back(klast8), l = back(klast);
    if (!syn)
        for (size_t n = 0; n < M; ++n) l8[M + n] = l[M + n];
    e.expect("final state (u8 run)", l8, l);
    if (!std::isnan((float)unused[0])) {
        std::printf("%s: a kernel wrote to an absent buffer\n", e.ctx);
        ++failures;
    }
}

#define BWDS(S) {adex_bwd_##S##_0, adex_bwd_##S##_1, adex_bwd_##S##_2, \
                 adex_bwd_##S##_3, adex_bwd_##S##_4, adex_bwd_##S##_5}

int main() {
    Bwd<float> b32[6] = BWDS(f32);
    Bwd<half> b16[6] = BWDS(f16);
    Bwd<bfloat> bb16[6] = BWDS(bf16);
    int cases = 0;
    for (size_t T : EMU_STEPS)
        for (int flags = 0; flags < 16; ++flags) {
            EmuCase<float> c32(T, flags, "f32");
            check<float>(c32, adex_fwd_f32_f32, adex_fwd_f32_u8, b32[c32.method]);
            EmuCase<float, half> c16(T, flags, "f16");
            check<half>(c16, adex_fwd_f16_f16, adex_fwd_f16_u8, b16[c16.method]);
            EmuCase<float, bfloat> cb(T, flags, "bf16");
            check<bfloat>(cb, adex_fwd_bf16_bf16, adex_fwd_bf16_u8, bb16[cb.method]);
            cases += 3;
        }
    std::printf("%d cases, %d mismatches\n", cases, failures);
    return failures == 0 ? 0 : 1;
}
