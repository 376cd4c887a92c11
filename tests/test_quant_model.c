// test_quant_model.c: a quantized frozen base on the CPU (--quantize). The forward equals the fp32
// model whose linear weights are the dequantized ones; LoRA, VeRA and AdaLoRA gradients on top pass
// finite differences; the trainer refuses full fine-tuning and the GPU; every quantized reference
// model case of tools/quant_reference passes peft check (skipped without the cases).
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "check.h"
#include "estimate.h"
#include "train.h"
#include "util.h"
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 19;

// m2's linears quantized; m1 the same weights with each linear replaced by m2's dequantized one.
static int forward_matches(const char *json, QuantType t, bool nested) {
    Model *m1 = test_model_from_json(json, 7), *m2 = test_model_from_json(json, 7);
    int ok = 1;
    for (int i = 0; i < m2->n_linears && ok; i++) {
        Linear *a = &m1->linears[i], *b = &m2->linears[i];
        ok = model_quantize_linear(m2, b, t, nested) == 0 && !b->weight->w;
        bool fan;
        const float *w = ok ? model_linear_weight(m2, b, &fan) : NULL;
        for (long o = 0; ok && o < a->out; o++)
            for (long k = 0; k < a->in; k++) a->weight->w[a->fan_in_fan_out ? k * a->out + o : o * a->in + k] = w[o * a->in + k];
    }
    enum { B = 2, T = 5 };
    int32_t ids[B * T];
    test_random_batch(ids, NULL, B * T, m1->cfg.vocab_size, &rng_state);
    long n = (long)B * T * m1->cfg.vocab_size;
    if (ok) {
        model_forward(m1, ids, NULL, B, T);
        float *ref = test_copy_logits(m1, n);
        model_forward(m2, ids, NULL, B, T);
        double e = rel_error(m2->act.logits, ref, n);
        if (!(e < 1e-6)) { fprintf(stderr, "  %s: logits differ by %g\n", quant_type_name(t), e); ok = 0; }
        free(ref);
    }
    model_free(m1);
    model_free(m2);
    return ok;
}

TEST(quant_forward_is_the_dequantized_model) {
    const char *jsons[] = {TINY_GPT2_JSON, TINY_LLAMA_JSON};
    for (int j = 0; j < 2; j++) {
        CHECK(forward_matches(jsons[j], QUANT_NF4, true));
        CHECK(forward_matches(jsons[j], QUANT_FP4, false));
        CHECK(forward_matches(jsons[j], QUANT_INT8, false));
    }
}

// Gradients of each method's tensors on a quantized base against central differences.
static int quant_gradcheck(const char *json, MethodId type, QuantType t) {
    Model *m = test_model_from_json(json, 3);
    for (int i = 0; i < m->n_linears; i++)
        if (model_quantize_linear(m, &m->linears[i], t, true)) { model_free(m); return 0; }
    AdapterConfig c;
    adapter_config_defaults(&c, type);
    c.r = c.init_r = 4;
    c.target_r = 2;
    adapter_config_set_targets(&c, "all-linear");
    int rc = adapters_attach(m, &c, 5);
    adapter_config_free(&c);
    if (rc) { fprintf(stderr, "  attach: %s\n", peft_last_error()); model_free(m); return 0; }
    for (int i = 0; i < m->adapters->n_params; i++) {  // every tensor non-zero, so that each carries a gradient
        Param *p = m->adapters->params[i];
        for (long k = 0; k < p->numel; k++) p->w[k] = (float)(test_urand(&rng_state) - 0.5) * 0.6f + 0.05f;
    }
    enum { B = 2, T = 6 };
    int32_t ids[B * T], labels[B * T];
    test_random_batch(ids, labels, B * T, m->cfg.vocab_size, &rng_state);
    TestBatch b = {ids, labels, B, T};
    model_forward(m, ids, labels, B, T);
    model_zero_grad(m);
    model_backward(m);
    int ok = test_gradcheck(m, test_batch_loss, &b, 1e-3, 1e-2, 1e-4);
    model_free(m);
    return ok;
}

TEST(quant_lora_gradcheck) {
    CHECK(quant_gradcheck(TINY_GPT2_JSON, METHOD_LORA, QUANT_NF4));
    CHECK(quant_gradcheck(TINY_LLAMA_JSON, METHOD_LORA, QUANT_INT8));
}
TEST(quant_vera_gradcheck) { CHECK(quant_gradcheck(TINY_LLAMA_JSON, METHOD_VERA, QUANT_FP4)); }
TEST(quant_adalora_gradcheck) { CHECK(quant_gradcheck(TINY_GPT2_JSON, METHOD_ADALORA, QUANT_NF4)); }

TEST(quant_train_refuses_full_and_cuda) {
    TrainConfig c;
    train_config_defaults(&c, METHOD_FULL);
    c.model_dir = test_tiny_model();
    c.data_path = "unused.txt";
    c.out_dir = test_tmpdir();
    c.quantize = QUANT_NF4;
    TrainResult res;
    CHECK(train_run(&c, NULL, &res) != 0 && strstr(peft_last_error(), "full fine-tuning") && strstr(peft_last_error(), "nf4-quantized"));
    // --device cuda trains on a quantized base: what stops this run is the missing GPU (or data), not the quantization.
    c.method = METHOD_LORA;
    c.cuda = true;
    CHECK(train_run(&c, NULL, &res) != 0 && !strstr(peft_last_error(), "quantized") && !strstr(peft_last_error(), "not implemented"));
    train_config_free(&c);
}

// Every <family>-lora-<q> case of the quantization reference: dequantized weights bit for bit, logits,
// loss, LoRA gradients and the AdamW step as the float64 reference on the dequantized base computed;
// its model-bnb folder (the base as transformers saves it quantized) loads to the same weights.
TEST(quant_reference_model_cases) {
    const char *dir = quant_fixtures_dir();
    if (!dir) SKIP(NO_QUANT_FIXTURES);
    DIR *d = opendir(dir);
    CHECK(d);
    int n = 0, failed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strstr(e->d_name, "-lora-") || e->d_name[0] == '.') continue;
        char *path = path_join(dir, e->d_name);
        CheckResult r;
        check_case(path, &r);
        n++;
        if (r.status != CHECK_PASS) fprintf(stderr, "  %s: %s\n", r.name, r.detail);
        failed += r.status != CHECK_PASS || !test_quant_bnb_folder(path);
        free(path);
    }
    closedir(d);
    CHECK_MSG(n == 10, "%d model cases in %s (10 expected: gpt2 and llama x nf4, nf4-nodq, fp4, fp4-nodq, int8)", n, dir);
    CHECK_MSG(failed == 0, "%d of %d quantized model cases fail", failed, n);
}

// peft estimate --quantize counts exactly the bytes the quantized linears take.
TEST(quant_estimate_counts_the_quantized_bytes) {
    Model *m = test_model_from_json(TINY_LLAMA_JSON, 2);
    EstModel em;
    CHECK(est_model_from_config(&em, &m->cfg, "tiny") == 0 && em.n_linears == m->n_linears);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    adapter_config_set_targets(&c, "all-linear");
    Estimate e;
    CHECK(estimate_compute(&e, &em, METHOD_LORA, &c, 2, 8) == 0);
    int64_t fp32_weights = e.cpu.weights, total = e.cpu.total, bytes = 0, widest = 0;
    for (int i = 0; i < m->n_linears; i++) {
        Linear *l = &m->linears[i];
        CHECK(model_quantize_linear(m, l, QUANT_NF4, true) == 0);
        bytes += (int64_t)qweight_bytes(l->q);
        if ((int64_t)l->in * l->out > widest) widest = (int64_t)l->in * l->out;
    }
    EstMemory gpu = e.gpu;
    estimate_quantize(&e, &em, &c, QUANT_NF4, true);
    CHECK(e.quant_bytes == bytes);
    CHECK(e.cpu.weights == fp32_weights - e.quant_fp32_bytes + bytes);
    CHECK(e.cpu.total == total - e.quant_fp32_bytes + bytes + 4 * widest);
    // The GPU column (gpu_quant.cu): per group of a block (q|k|v, o, gate|up, down) its bf16 weights and the
    // fused input gradient's round8(R) spare rows leave the arena; each linear's codes (n/2 bytes, 256-aligned)
    // and fp32 absmax (64-aligned) join it; the largest group's bf16 scratch (+ spare rows) is workspace.
    int64_t removed = 0, device = 0, scratch = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        Block *b = &m->blocks[l];
        Linear *groups[4][3] = {{b->q, b->k, b->v}, {b->o}, {b->gate, b->up}, {b->down}};
        for (int g = 0; g < 4; g++) {
            int64_t out = 0, in = groups[g][0]->in, R = 0;
            for (int k = 0; k < 3 && groups[g][k]; k++) {
                Linear *lin = groups[g][k];
                device += ((int64_t)lin->q->rows * lin->q->cols / 2 + 255) / 256 * 256 + 4 * ((lin->q->n_blocks + 63) / 64 * 64);
                removed += 2 * (int64_t)lin->in * lin->out;
                out += lin->out;
                R += c.r;
            }
            int64_t spare = (R + 7) / 8 * 8;
            removed += 2 * spare * in;
            if (2 * (out + spare) * in > scratch) scratch = 2 * (out + spare) * in;
        }
    }
    CHECK(e.gpu.weights == gpu.weights - removed + device);
    CHECK(e.gpu.workspace == gpu.workspace + scratch);
    CHECK(e.gpu.total == gpu.total - removed + device + scratch);
    adapter_config_free(&c);
    est_model_free(&em);
    model_free(m);
}
