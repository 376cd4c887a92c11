// sampling.c: choosing the next token from logits, with HF transformers' semantics:
// repetition penalty (a processor, on the raw logits), then the warpers temperature, top-k,
// top-p, in that order, then a draw from the kept tokens. Greedy is argmax (first maximum).
// Also the generation parameters' defaults and the model folder's eos tokens.
#include "generate.h"
#include "kernels.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void gen_params_default(GenParams *p) {
    memset(p, 0, sizeof *p);
    p->max_new_tokens = 64;
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->num_beams = 1;
    p->length_penalty = 1.0f;
    p->early_stopping = true;
    p->eos_id = GEN_EOS_DEFAULT;
}

void gen_params_read_eos(const char *dir, GenParams *p) {
    char *path = path_join(dir, "generation_config.json");
    char *text = file_exists(path) ? read_file(path, NULL) : NULL;
    free(path);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    const cJSON *e = j ? cJSON_GetObjectItemCaseSensitive(j, "eos_token_id") : NULL;
    if (e && cJSON_IsNumber(e)) p->eos_id = e->valueint;
    else if (e && cJSON_IsArray(e)) {
        int k = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, e) {
            if (!cJSON_IsNumber(x)) continue;
            if (k == 0) p->eos_id = x->valueint;
            else if (p->n_extra_eos < 8) p->extra_eos[p->n_extra_eos++] = x->valueint;
            k++;
        }
    }
    cJSON_Delete(j);
}

static inline uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void gen_rng_seed(GenRng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

double gen_rng_uniform(GenRng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return (result >> 11) * 0x1.0p-53;
}

void gen_repetition_penalty(float *logits, int V, float penalty, const int32_t *history, int n, const int32_t *more, int n_more,
                            uint8_t *seen) {
    if (penalty == 1.0f || n + n_more <= 0) return;
    for (int part = 0; part < 2; part++) {
        const int32_t *h = part ? more : history;
        for (int i = 0, len = part ? n_more : n; i < len; i++) {
            int t = h[i];
            if (t < 0 || t >= V || seen[t]) continue;
            seen[t] = 1;
            logits[t] = logits[t] < 0 ? logits[t] * penalty : logits[t] / penalty;
        }
    }
    for (int part = 0; part < 2; part++) {
        const int32_t *h = part ? more : history;
        for (int i = 0, len = part ? n_more : n; i < len; i++)
            if (h[i] >= 0 && h[i] < V) seen[h[i]] = 0;
    }
}

void gen_log_softmax(float *x, int V) {
    float logz = (float)row_logsumexp(x, V);
    for (int i = 0; i < V; i++) x[i] -= logz;
}

size_t gen_sample_work_size(int V) { return (size_t)V * (2 * sizeof(float) + sizeof(int)); }

int gen_argmax(const float *x, int V) {
    int best = 0;
    for (int i = 1; i < V; i++) if (x[i] > x[best]) best = i;
    return best;
}

// The k-th largest of x[n] (1-based), by quickselect on the scratch copy.
static float kth_largest(float *x, int n, int k) {
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = x[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (x[i] > pivot) i++;
            while (x[j] < pivot) j--;
            if (i <= j) { float t = x[i]; x[i] = x[j]; x[j] = t; i++; j--; }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return x[want];
    }
    return x[want];
}

static int by_value_desc(const void *a, const void *b, void *vals) {
    const float *v = vals;
    float x = v[*(const int *)a], y = v[*(const int *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int *)a - *(const int *)b;  // ties: lower id first (deterministic)
}

static bool greedy(const GenParams *p) { return !(p->temperature > 0) || p->top_k == 1; }

bool gen_is_plain_greedy(const GenParams *p) { return greedy(p) && p->repetition_penalty == 1.0f; }

int gen_sample(float *logits, int V, const GenParams *p, const int32_t *history, int n_history, GenRng *rng,
               void *work, uint8_t *seen) {
    gen_repetition_penalty(logits, V, p->repetition_penalty, history, n_history, NULL, 0, seen);
    if (greedy(p)) return gen_argmax(logits, V);
    float *val = work, *scratch = val + V;
    int *idx = (int *)(scratch + V);
    float inv_t = 1.0f / p->temperature;
    for (int i = 0; i < V; i++) val[i] = logits[i] * inv_t;  // HF: scores / temperature
    int n = V;
    for (int i = 0; i < V; i++) idx[i] = i;
    // top-k: keep every token scoring at least the k-th largest score (ties kept, as HF).
    if (p->top_k > 0 && p->top_k < V) {
        memcpy(scratch, val, sizeof(float) * V);
        float kth = kth_largest(scratch, V, p->top_k);
        n = 0;
        for (int i = 0; i < V; i++) if (val[i] >= kth) idx[n++] = i;
    }
    float maxv = -INFINITY;
    for (int j = 0; j < n; j++) if (val[idx[j]] > maxv) maxv = val[idx[j]];
    double total = 0;
    for (int j = 0; j < n; j++) total += (scratch[j] = expf(val[idx[j]] - maxv));
    // top-p: HF sorts ascending and drops tokens whose cumulative probability is <= 1 - top_p;
    // in descending order that keeps a token while the mass before it is < top_p. A token of
    // probability below (1 - top_p) / n can never be kept, so only the others are sorted.
    if (p->top_p < 1.0f && p->top_p >= 0.0f && n > 1) {
        double floor_p = 0.5 * (1.0 - p->top_p) / n * total;
        int m = 0;
        for (int j = 0; j < n; j++) if (scratch[j] >= floor_p) idx[m++] = idx[j];
        qsort_r(idx, m, sizeof(int), by_value_desc, val);
        double before = 0;
        int keep = 0;
        while (keep < m && (keep == 0 || before < p->top_p * total)) before += expf(val[idx[keep++]] - maxv);
        n = keep;
        total = 0;
        for (int j = 0; j < n; j++) total += (scratch[j] = expf(val[idx[j]] - maxv));
    }
    double u = gen_rng_uniform(rng) * total, acc = 0;
    for (int j = 0; j < n; j++) {
        acc += scratch[j];
        if (u < acc) return idx[j];
    }
    return idx[n - 1];
}
