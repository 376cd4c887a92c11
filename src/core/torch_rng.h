// torch_rng.h: a bit-exact copy of torch's CPU generator (torch.Generator(), torch 2.11) and
// the float32 fills PEFT draws from it: uniform_, normal_, kaiming_uniform_ and VeRA's
// shared projections. The same seed gives the same float bits as torch on an x86-64 CPU
// with AVX2 (torch's AVX2 and AVX512 kernels agree; its no-SIMD "default" kernels, e.g.
// ATEN_CPU_CAPABILITY=default, round differently: no FMA, libm instead of avx_mathfun).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

enum { MT_N = 624 };

// at::CPUGeneratorImpl: an mt19937 plus the cached second Box-Muller sample of the
// scalar (double) normal path, which manual_seed clears.
typedef struct {
    uint32_t state[MT_N];
    int next;                 // index of the next state word to temper
    bool has_next_normal;
    double next_normal;
} TorchGen;

// torch.Generator().manual_seed(seed): mt19937 init_genrand on the low 32 bits of seed.
void torch_gen_seed(TorchGen *g, uint64_t seed);
// Next 32-bit mt19937 output (torch's gen.random()).
uint32_t torch_gen_random(TorchGen *g);
// Two outputs, the first in the high half (torch's random64()).
uint64_t torch_gen_random64(TorchGen *g);

// One float32 draw of at::uniform_real_distribution<float>(from, to): 24 random bits
// scaled to [0,1), then fmaf(x, to - from, from): float, one rounding.
float torch_uniform_f32(TorchGen *g, float from, float to);

// tensor.uniform_(from, to, generator=g) on a contiguous float32 tensor of n elements.
// from/to are the Python doubles; torch casts them to float first.
void torch_uniform_(TorchGen *g, float *x, size_t n, double from, double to);

// tensor.normal_(mean, std, generator=g) on a contiguous float32 tensor. n >= 16 takes
// torch's blocked Box-Muller over float uniforms (normal_fill_AVX2, in float with its own
// polynomial log/sincos); n < 16 takes the per-element double Box-Muller that caches its
// second sample in the generator.
void torch_normal_(TorchGen *g, float *x, size_t n, double mean, double std);

// torch.nn.init.kaiming_uniform_(t, a, mode="fan_in", nonlinearity="leaky_relu"):
// bound = sqrt(2 / (1 + a^2)) / sqrt(fan_in) * sqrt(3), then uniform_(-bound, bound).
// fan_in is t.size(1) * receptive field (= size(1) for a 2-D weight).
void torch_kaiming_uniform_(TorchGen *g, float *x, size_t n, double a, int64_t fan_in);

// PEFT 0.21 VeRA's shared frozen projections: a fresh generator seeded with
// projection_prng_key, then vera_A [r, max_in] and vera_B [max_out, r] drawn in that
// order, each kaiming-uniform with gain sqrt(2) and fan = its dim 1.
void vera_projections(uint64_t key, int r, int max_in, int max_out, float *A /*[r*max_in]*/,
                      float *B /*[max_out*r]*/);
