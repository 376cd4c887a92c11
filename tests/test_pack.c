// test_pack.c: packing (dataset_pack, Model.positions): the packed loss (the sum over tokens over
// their count) and every gradient equal the unpacked ones on the same examples, for GPT-2 (learned
// positions), Llama (rope, GQA) and Mistral's sliding window.
#include "test.h"
#include "helpers.h"
#include "data.h"
#include "model.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { N_EX = 7, SEQ = 16 };

// N_EX examples of 2..9 tokens; about half the targets carry a loss, as prompt/completion data.
static void examples(Dataset *ds, int V, uint64_t *rng) {
    memset(ds, 0, sizeof *ds);
    ds->offset = xcalloc(N_EX + 1, sizeof(long));
    ds->ids = xmalloc(sizeof(int32_t) * N_EX * 10);
    ds->labels = xmalloc(sizeof(int32_t) * N_EX * 10);
    for (int i = 0; i < N_EX; i++) {
        int len = 2 + (int)(test_urand(rng) * 8);
        long a = ds->offset[i];
        for (int j = 0; j < len; j++) {
            ds->ids[a + j] = (int32_t)(test_urand(rng) * V);
            ds->labels[a + j] = j > 0 && test_urand(rng) < 0.6 ? ds->ids[a + j] : -100;
        }
        ds->labels[a + len - 1] = ds->ids[a + len - 1];  // every example has a loss
        ds->offset[i + 1] = a + len;
        if (len > ds->max_len) ds->max_len = len;
    }
    ds->n_seq = ds->n_examples = N_EX;
}

// The loss and gradients of all of ds's sequences as one batch; grads[] gets every gradient.
static double batch_loss(Model *m, const Dataset *ds, float *grads, long *count) {
    int *idx = xmalloc(sizeof(int) * ds->n_seq);
    for (int i = 0; i < ds->n_seq; i++) idx[i] = i;
    int32_t *ids = xmalloc(sizeof(int32_t) * ds->n_seq * ds->max_len), *labels = xmalloc(sizeof(int32_t) * ds->n_seq * ds->max_len);
    int32_t *pos = xmalloc(sizeof(int32_t) * ds->n_seq * ds->max_len);
    int T = dataset_batch(ds, idx, ds->n_seq, ids, labels);
    if (ds->pos) dataset_batch_positions(ds, idx, ds->n_seq, T, pos);
    m->positions = ds->pos ? pos : NULL;
    model_zero_grad(m);
    double loss = model_forward(m, ids, labels, ds->n_seq, T);
    m->positions = NULL;
    model_backward(m);
    *count = count_loss_tokens(labels, ds->n_seq, T);
    long k = 0;
    for (int i = 0; i < m->n_params; i++)
        for (long j = 0; j < m->params[i].numel; j++) grads[k++] = m->params[i].grad[j];
    free(idx);
    free(ids);
    free(labels);
    free(pos);
    return loss;
}

static void check_packed_equals_unpacked(int *failed_, const char *json, int window) {
    Model *m = test_model_from_json(json, 11);
    CHECK(m);
    m->cfg.sliding_window = window;
    model_train_all(m);
    long n = 0;
    for (int i = 0; i < m->n_params; i++) n += m->params[i].numel;
    float *gu = xmalloc(sizeof(float) * n), *gp = xmalloc(sizeof(float) * n);
    uint64_t rng = 5;
    Dataset ds, packed;
    examples(&ds, m->cfg.vocab_size, &rng);
    dataset_pack(&ds, SEQ, &packed);
    CHECK_MSG(packed.n_seq >= 2 && packed.n_seq < ds.n_seq, "%d examples in %d sequences", ds.n_seq, packed.n_seq);
    CHECK(packed.n_loss_tokens > 0 && packed.max_len <= SEQ);
    long cu, cp;
    double lu = batch_loss(m, &ds, gu, &cu), lp = batch_loss(m, &packed, gp, &cp);
    CHECK_MSG(cu == cp && cp == packed.n_loss_tokens, "%ld tokens with a loss unpacked, %ld packed", cu, cp);
    CHECK_MSG(fabs(lu * cu - lp * cp) <= 1e-5 * fabs(lu * cu), "loss sum %.9g unpacked, %.9g packed", lu * cu, lp * cp);
    double gmax = 0, dmax = 0;
    long worst = 0;
    for (long i = 0; i < n; i++) {
        if (fabs(gu[i]) > gmax) gmax = fabs(gu[i]);
        if (fabs(gu[i] - gp[i]) > dmax) { dmax = fabs(gu[i] - gp[i]); worst = i; }
    }
    CHECK_MSG(gmax > 0 && dmax <= 1e-5 * gmax, "gradients differ by %g (largest %g) at %ld: %g vs %g", dmax, gmax, worst, gu[worst], gp[worst]);
    // Without the positions and masks (plain rows of several examples) it would not be the same loss.
    Dataset plain = packed;
    plain.pos = NULL;
    long cq;
    double lq = batch_loss(m, &plain, gp, &cq);
    CHECK_MSG(fabs(lq * cq - lu * cu) > 1e-4 * fabs(lu * cu), "packing without positions and masks gave the same loss");
    dataset_free(&ds);
    dataset_free(&packed);
    free(gu);
    free(gp);
    model_free(m);
}

TEST(pack_loss_and_gradients_equal_unpacked_gpt2) { check_packed_equals_unpacked(failed_, TINY_GPT2_JSON, 0); }
TEST(pack_loss_and_gradients_equal_unpacked_llama) { check_packed_equals_unpacked(failed_, TINY_LLAMA_JSON, 0); }
TEST(pack_loss_and_gradients_equal_unpacked_sliding_window) { check_packed_equals_unpacked(failed_, TINY_LLAMA_JSON, 3); }

TEST(pack_layout) {
    uint64_t rng = 9;
    Dataset ds, packed;
    examples(&ds, 40, &rng);
    dataset_pack(&ds, SEQ, &packed);
    // Whole examples, in order, positions from 0 at each, the first token of each without a loss.
    long k = 0;
    for (int s = 0; s < packed.n_seq; s++) {
        CHECK(packed.offset[s + 1] - packed.offset[s] <= SEQ);
        CHECK(packed.pos[packed.offset[s]] == 0);
    }
    for (int i = 0; i < ds.n_seq; i++)
        for (long j = ds.offset[i]; j < ds.offset[i + 1]; j++, k++) {
            CHECK(packed.ids[k] == ds.ids[j] && packed.pos[k] == j - ds.offset[i]);
            CHECK(packed.labels[k] == (j == ds.offset[i] ? -100 : ds.labels[j]));
        }
    CHECK(k == packed.offset[packed.n_seq]);
    int idx[2] = {0, 1}, T = packed.max_len;
    int32_t ids[2 * SEQ], labels[2 * SEQ], pos[2 * SEQ];
    T = dataset_batch(&packed, idx, 2, ids, labels);
    dataset_batch_positions(&packed, idx, 2, T, pos);
    long len0 = packed.offset[1];
    for (int t = (int)len0; t < T; t++) CHECK(pos[t] == t - len0 && labels[t] == -100);  // padding: its own run, no loss
    dataset_free(&ds);
    dataset_free(&packed);
}
