// torch_rng.c: see torch_rng.h. Every cast and every operation order below follows torch's
// own code (ATen/core/MT19937RNGEngine.h, TransformationHelper.h, DistributionsHelper.h,
// native/cpu/DistributionTemplates.h), because changing any of them changes the last bit.
#include "torch_rng.h"
#include <math.h>
#include <string.h>

// Every fused multiply-add below is written out as fma(); the compiler must not add more.
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static const double PI = 3.14159265358979323846; // c10::pi<double>

void torch_gen_seed(TorchGen *g, uint64_t seed) {
    // torch keeps the 64-bit seed but initialises the state from its low 32 bits only.
    g->state[0] = (uint32_t)seed;
    for (int j = 1; j < MT_N; j++) {
        uint32_t p = g->state[j - 1];
        g->state[j] = 1812433253u * (p ^ (p >> 30)) + (uint32_t)j;
    }
    g->next = MT_N; // regenerate on the first draw
    g->has_next_normal = false;
    g->next_normal = 0.0;
}

static void mt_twist(TorchGen *g) {
    enum { M = 397 };
    uint32_t *s = g->state;
    for (int i = 0; i < MT_N; i++) {
        uint32_t y = (s[i] & 0x80000000u) | (s[(i + 1) % MT_N] & 0x7fffffffu);
        s[i] = s[(i + M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    g->next = 0;
}

uint32_t torch_gen_random(TorchGen *g) {
    if (g->next >= MT_N) mt_twist(g);
    uint32_t y = g->state[g->next++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t torch_gen_random64(TorchGen *g) {
    uint64_t hi = torch_gen_random(g);
    uint64_t lo = torch_gen_random(g);
    return (hi << 32) | lo;
}

float torch_uniform_f32(TorchGen *g, float from, float to) {
    // float has 24 significand bits: keep that many random bits, scale exactly into [0, 1).
    float x = (float)(torch_gen_random(g) & ((1u << 24) - 1)) * (1.0f / (1 << 24));
    // dist_acctype<float> is float, so the affine map is float too. torch's x86 builds for
    // AVX2/AVX512 contract x * (to - from) + from into one fused multiply-add (a single
    // rounding); the VeRA fixtures match only that, not separate float or double steps.
    return fmaf(x, to - from, from);
}

// at::uniform_real_distribution<double>(0, 1): 53 random bits from random64().
static double uniform_f64(TorchGen *g) {
    return (double)(torch_gen_random64(g) & ((UINT64_C(1) << 53) - 1)) * (1.0 / (UINT64_C(1) << 53));
}

void torch_uniform_(TorchGen *g, float *x, size_t n, double from, double to) {
    float f = (float)from, t = (float)to; // uniform_kernel casts to scalar_t before drawing
    for (size_t i = 0; i < n; i++) x[i] = torch_uniform_f32(g, f, t);
}

// Scalar ports of the Cephes-style log256_ps / sincos256_ps (ATen's avx_mathfun.h), which
// torch's AVX2 and AVX512 kernels use for float normal_ (not libm). torch is built with GCC
// and -mfma, so GCC fuses every multiply whose only use is an add into an FMA; the fmaf()
// calls below sit exactly where that happens (checked bit-for-bit against torch 2.11 on
// 131k draws: leaving out any one of them changes some outputs).
static float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// Natural log for x in (0, 1], the only range normal_ feeds it.
static float cephes_logf(float x) {
    static const float p[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                               -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                               2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
    uint32_t u = f32_bits(x);
    // x = m * 2^e with m in [0.5, 1); then shift m to around 1 so the series converges.
    float e = (float)((int)(u >> 23) - 0x7f) + 1.0f;
    float m = f32_from_bits((u & ~0x7f800000u) | 0x3f000000u);
    if (m < 0.707106781186547524f) {
        e -= 1.0f;
        m = (m - 1.0f) + m;
    } else {
        m = m - 1.0f;
    }
    float z = m * m;
    float y = p[0];
    for (int k = 1; k < 9; k++) y = fmaf(y, m, p[k]);
    y = y * m;
    y = fmaf(y, z, e * -2.12194440e-4f); // the y*z product is fused, e*q1 is rounded
    y = fmaf(-z, 0.5f, y);
    return fmaf(e, 0.693359375f, m + y);
}

// sin and cos of x >= 0 (theta = 2*pi*u is never negative here).
static void cephes_sincosf(float x, float *s, float *c) {
    int j = (int)(x * 1.27323954473516f); // octant: x / (pi/4), truncated
    j = (j + 1) & ~1;
    float y = (float)j;
    uint32_t sign_sin = (uint32_t)(j & 4) << 29;
    uint32_t sign_cos = (uint32_t)(~(j - 2) & 4) << 29;
    bool sin_uses_sin_poly = (j & 2) == 0;
    // Cody-Waite reduction: pi/4 split into three parts so x - y*pi/4 keeps its precision.
    x = fmaf(y, -0.78515625f, x);
    x = fmaf(y, -2.4187564849853515625e-4f, x);
    x = fmaf(y, -3.77489497744594108e-8f, x);
    float z = x * x;
    float yc = fmaf(2.443315711809948E-005f, z, -1.388731625493765E-003f);
    yc = fmaf(yc, z, 4.166664568298827E-002f);
    yc = yc * z;
    yc = fmaf(yc, z, -(z * 0.5f)) + 1.0f;
    float ys = fmaf(-1.9515295891E-4f, z, 8.3321608736E-3f);
    ys = fmaf(ys, z, -1.6666654611E-1f);
    ys = ys * z;
    ys = fmaf(ys, x, x);
    float sv = sin_uses_sin_poly ? ys : yc, cv = sin_uses_sin_poly ? yc : ys;
    *s = f32_from_bits(f32_bits(sv) ^ sign_sin);
    *c = f32_from_bits(f32_bits(cv) ^ sign_cos);
}

// torch's normal_fill_16_AVX2: Box-Muller pairing element j with j + 8 of a block of 16
// uniforms, all in float.
static void normal_fill_16(float *d, float mean, float std) {
    const float two_pi = (float)(2.0 * PI);
    for (int j = 0; j < 8; j++) {
        float u1 = 1.0f - d[j]; // [0, 1) -> (0, 1] so the log is finite
        float radius = sqrtf(-2.0f * cephes_logf(u1));
        float s, c;
        cephes_sincosf(two_pi * d[j + 8], &s, &c);
        d[j] = fmaf(radius * c, std, mean);
        d[j + 8] = fmaf(radius * s, std, mean);
    }
}

// One at::normal_distribution<double> draw: a fresh pair gives r*cos now and caches r*sin
// in the generator for the next call (which manual_seed clears).
static double normal_f64(TorchGen *g, double mean, double std) {
    double v;
    if (g->has_next_normal) {
        v = g->next_normal;
        g->has_next_normal = false;
    } else {
        double u1 = uniform_f64(g), u2 = uniform_f64(g);
        double r = sqrt(-2.0 * log1p(-u2));
        double theta = 2.0 * PI * u1;
        g->next_normal = r * sin(theta);
        g->has_next_normal = true;
        v = r * cos(theta);
    }
    return fma(v, std, mean); // one expression in torch, so GCC fuses it like uniform's
}

void torch_normal_(TorchGen *g, float *x, size_t n, double mean, double std) {
    if (n < 16) {
        for (size_t i = 0; i < n; i++) x[i] = (float)normal_f64(g, mean, std);
        return;
    }
    float m = (float)mean, s = (float)std;
    for (size_t i = 0; i < n; i++) x[i] = torch_uniform_f32(g, 0.0f, 1.0f);
    for (size_t i = 0; i + 16 <= n; i += 16) normal_fill_16(x + i, m, s);
    if (n % 16) {
        // torch redraws the last 16 slots (overlapping the previous block) from fresh uniforms.
        float *tail = x + n - 16;
        for (int i = 0; i < 16; i++) tail[i] = torch_uniform_f32(g, 0.0f, 1.0f);
        normal_fill_16(tail, m, s);
    }
}

void torch_kaiming_uniform_(TorchGen *g, float *x, size_t n, double a, int64_t fan_in) {
    // Same double arithmetic, in the same order, as torch.nn.init in Python.
    double gain = sqrt(2.0 / (1.0 + a * a));
    double std = gain / sqrt((double)fan_in);
    double bound = sqrt(3.0) * std;
    torch_uniform_(g, x, n, -bound, bound);
}

void vera_projections(uint64_t key, int r, int max_in, int max_out, float *A, float *B) {
    TorchGen g;
    torch_gen_seed(&g, key);
    // PEFT's _kaiming_init is kaiming_uniform_ with a = 0 (gain sqrt(2)); fan = dim 1.
    torch_kaiming_uniform_(&g, A, (size_t)r * (size_t)max_in, 0.0, max_in);
    torch_kaiming_uniform_(&g, B, (size_t)max_out * (size_t)r, 0.0, r);
}
