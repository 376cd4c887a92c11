// Estimator tests: the papers' parameter counts (LoRA on RoBERTa and GPT-3, VeRA on RoBERTa), the
// presets' parameter counts against the published models, the module enumeration against a built
// Model, and every method's estimate against a real built, attached and saved adapter.
#include "test.h"
#include "adapter.h"
#include "estimate.h"
#include "lora_init.h"
#include "model.h"
#include "util.h"
#include <malloc.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int64_t estimate_trainable(const char *preset, MethodId method, int r, const char *targets, Estimate *out) {
    EstModel em;
    if (est_model_preset(&em, preset)) return -1;
    AdapterConfig c;
    adapter_config_defaults(&c, method == METHOD_VERA ? METHOD_VERA : method == METHOD_ADALORA ? METHOD_ADALORA : METHOD_LORA);
    c.r = r;
    if (method == METHOD_ADALORA) c.init_r = r;
    adapter_config_set_targets(&c, targets);
    Estimate e;
    int rc = estimate_compute(&e, &em, method, &c, 1, 128);
    adapter_config_free(&c);
    est_model_free(&em);
    if (out) *out = e;
    return rc ? -1 : e.trainable;
}

// LoRA paper Table 2 / VeRA paper Table 1: RoBERTa-base, query and value of all 12 layers.
TEST(estimate_roberta_paper_counts) {
    CHECK(estimate_trainable("roberta-base", METHOD_LORA, 1, "query,value", NULL) == 36864);
    CHECK(estimate_trainable("roberta-base", METHOD_LORA, 16, "query,value", NULL) == 589824);
    CHECK(estimate_trainable("roberta-base", METHOD_LORA, 256, "query,value", NULL) == 9437184);
    // VeRA: b [out] and d [r] per adapted matrix: 24 * (768 + r)
    CHECK(estimate_trainable("roberta-base", METHOD_VERA, 1, "query,value", NULL) == 18456);
    CHECK(estimate_trainable("roberta-base", METHOD_VERA, 16, "query,value", NULL) == 18816);
    Estimate e;
    CHECK(estimate_trainable("roberta-base", METHOD_VERA, 256, "query,value", &e) == 24576);
    CHECK(e.n_adapted == 24 && e.vera_max_in == 768 && e.vera_max_out == 768);
    CHECK(e.vera_projection == 256 * 768 * 2);
    // 24 * 2 vectors + vera_A/B: file = header + 4 bytes per value
    CHECK(e.file_bytes_without_projection > 24576 * 4 && e.file_bytes_without_projection < 24576 * 4 + 8192);
    CHECK(e.file_bytes_with_projection - e.file_bytes_without_projection > 4 * e.vera_projection);
}

// LoRA paper: GPT-3 175B, W_q and W_v, r = 4: 18.9M parameters, "35 MB" in fp16.
TEST(estimate_gpt3_lora) {
    Estimate e;
    CHECK(estimate_trainable("gpt3-175b", METHOD_LORA, 4, "query,value", &e) == 18874368);
    CHECK(e.n_adapted == 192);
    CHECK_NEAR(e.trainable * 2 / 1048576.0, 36.0, 1e-9);  // 36 MiB = 37.7 MB in fp16
    CHECK(e.base_params == 174604259328LL);
}

TEST(estimate_preset_parameter_counts) {
    static const struct { const char *name; int64_t params; } known[] = {
        {"gpt2", 124439808},         {"gpt2-medium", 354823168},     {"gpt2-large", 774030080},
        {"llama-2-7b", 6738415616LL}, {"llama-2-13b", 13015864320LL}, {"tinyllama-1.1b", 1100048384},
        {"roberta-base", 124645632}, {"roberta-large", 355359744},
    };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        EstModel em;
        CHECK_MSG(est_model_preset(&em, known[i].name) == 0, "%s", peft_last_error());
        CHECK_MSG(em.n_params == known[i].params, "%s: %lld, expected %lld", known[i].name, (long long)em.n_params, (long long)known[i].params);
        est_model_free(&em);
    }
    EstModel em;
    CHECK(est_model_preset(&em, "no-such-model") != 0);
    CHECK(strstr(peft_last_error(), "roberta-base") != NULL);
}

static ModelConfig tiny(const char *type, bool tied, bool attention_bias) {
    ModelConfig c = {0};
    snprintf(c.model_type, sizeof c.model_type, "%s", type);
    c.arch = strcmp(type, "gpt2") ? ARCH_LLAMA : ARCH_GPT2;
    c.vocab_size = 37; c.n_layer = 3; c.n_embd = 16; c.n_head = 4; c.head_dim = 4;
    c.n_kv_head = c.arch == ARCH_GPT2 ? 4 : 2;
    c.n_inner = c.arch == ARCH_GPT2 ? 64 : 24;
    c.n_positions = 32; c.norm_eps = 1e-5f; c.rope_theta = 10000.0f;
    c.tie_word_embeddings = tied;
    c.qkv_bias = c.arch == ARCH_GPT2 || !strcmp(type, "qwen2") || attention_bias;
    c.o_bias = c.arch == ARCH_GPT2 || attention_bias;
    c.mlp_bias = c.arch == ARCH_GPT2;
    return c;
}

// The enumeration (names, shapes, biases, order) and the parameter count equal a built Model's.
TEST(estimate_enumeration_matches_model) {
    ModelConfig cfgs[] = {tiny("gpt2", true, false), tiny("gpt2", false, false), tiny("llama", false, false),
                          tiny("llama", true, true), tiny("qwen2", false, false), tiny("mistral", false, false)};
    for (size_t k = 0; k < sizeof cfgs / sizeof *cfgs; k++) {
        Model *m = model_create_random(&cfgs[k], 1);
        EstModel em;
        CHECK(est_model_from_config(&em, &cfgs[k], "tiny") == 0);
        CHECK_MSG(em.n_linears == m->n_linears, "%s: %d vs %d", cfgs[k].model_type, em.n_linears, m->n_linears);
        for (int i = 0; i < m->n_linears; i++) {
            const Linear *l = &m->linears[i];
            CHECK_MSG(!strcmp(em.linears[i].name, l->module) && em.linears[i].in == l->in && em.linears[i].out == l->out &&
                          em.linears[i].bias == (l->bias != NULL),
                      "%s: module %d: %s [%d->%d] vs %s [%d->%d]", cfgs[k].model_type, i, em.linears[i].name, em.linears[i].in,
                      em.linears[i].out, l->module, l->in, l->out);
        }
        CHECK_MSG(em.n_params == model_count_params(m, false), "%s: %lld vs %ld", cfgs[k].model_type, (long long)em.n_params,
                  model_count_params(m, false));
        est_model_free(&em);
        model_free(m);
    }
}

static int64_t file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

// For every method: the estimate's trainable count equals the attached model's, VeRA's projection
// shapes equal vera.c's, and the predicted adapter_model.safetensors size is the size written.
TEST(estimate_matches_built_model_every_method) {
    const struct { const char *type; const char *targets; } cases[] = {
        {"gpt2", "c_attn"}, {"gpt2", "all-linear"}, {"gpt2", "c_proj"},
        {"llama", "q_proj,v_proj"}, {"llama", "all-linear"}, {"llama", "re:.*\\.(k_proj|down_proj)"},
    };
    const MethodId types[] = {METHOD_LORA, METHOD_VERA, METHOD_ADALORA, METHOD_DORA};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        ModelConfig mc = tiny(cases[k].type, !strcmp(cases[k].type, "gpt2"), false);
        EstModel em;
        CHECK(est_model_from_config(&em, &mc, "tiny") == 0);
        for (int t = 0; t < 4; t++)
            for (int save_proj = 0; save_proj < 2; save_proj++) {
                if (types[t] != METHOD_VERA && !save_proj) continue;
                AdapterConfig c;
                adapter_config_defaults(&c, types[t]);
                c.r = types[t] == METHOD_VERA ? 5 : 3;
                if (types[t] == METHOD_ADALORA) { c.init_r = 6; c.target_r = 6; c.r = c.init_r; }
                c.save_projection = save_proj;
                adapter_config_set_targets(&c, cases[k].targets);
                Model *m = model_create_random(&mc, 7);
                CHECK_MSG(adapters_attach(m, &c, 3) == 0, "%s", peft_last_error());
                Estimate e;
                CHECK_MSG(estimate_compute(&e, &em, types[t], &c, 2, 8) == 0, "%s", peft_last_error());
                CHECK_MSG(e.trainable == model_count_params(m, true), "%s %s %s: %lld vs %ld", cases[k].type, cases[k].targets,
                          method_get(types[t])->title, (long long)e.trainable, model_count_params(m, true));
                CHECK(e.n_adapted == m->adapters->n);
                if (types[t] == METHOD_VERA) CHECK(e.vera_max_in == m->adapters->vera_max_in && e.vera_max_out == m->adapters->vera_max_out);
                const char *dir = test_tmpdir();
                CHECK_MSG(adapters_save(m, dir) == 0, "%s", peft_last_error());
                char *path = path_join(dir, "adapter_model.safetensors");
                int64_t got = file_size(path);
                free(path);
                CHECK_MSG(got == e.file_bytes, "%s %s %s save_projection=%d: file %lld bytes, estimate %lld", cases[k].type,
                          cases[k].targets, method_get(types[t])->title, save_proj, (long long)got, (long long)e.file_bytes);
                // AdaLoRA with target_r = init_r: the final-budget file is this file.
                if (types[t] == METHOD_ADALORA) CHECK(e.adalora_final_file_bytes == e.file_bytes && e.adalora_final_params == e.trainable);
                model_free(m);
                adapter_config_free(&c);
            }
        // Full fine-tuning: every parameter.
        Model *m = model_create_random(&mc, 7);
        model_train_all(m);
        AdapterConfig c;
        adapter_config_defaults(&c, METHOD_LORA);
        Estimate e;
        CHECK(estimate_compute(&e, &em, METHOD_FULL, &c, 2, 8) == 0);
        CHECK(e.trainable == model_count_params(m, true) && e.trainable == e.base_params);
        CHECK(e.cpu.total == e.cpu_full.total && e.gpu.total == e.gpu_full.total);
        model_free(m);
        adapter_config_free(&c);
        est_model_free(&em);
    }
}

// modules_to_save (and bias "all" beside it) on GPT-2 and Llama: the head, the embedding, a norm, a linear of
// every layer. Against the attached model: the trainable count, the file adapters_save writes (bytes), the CPU
// column (each tensor once: the trained base tensors are the model's own; their gradients and moments). A tied
// model refuses its embedding / head as adapters_attach does, and an entry that names nothing as it does; with
// --quantize, a linear to save.
TEST(estimate_modules_to_save_matches_built_model) {
    const struct { const char *type; bool tied; const char *targets, *save; bool bias; } cases[] = {
        {"gpt2", false, "c_attn", "lm_head", false},   {"gpt2", false, "c_attn", "wte", false},
        {"gpt2", false, "c_attn", "ln_f", true},       {"gpt2", false, "c_attn", "c_fc", false},
        {"llama", false, "v_proj", "lm_head", false},  {"llama", false, "v_proj", "embed_tokens", false},
        {"llama", false, "v_proj", "model.norm", false}, {"llama", false, "v_proj", "q_proj", false},
        {"qwen2", false, "v_proj", "q_proj", true},    {"llama", false, "v_proj", "input_layernorm", false},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        ModelConfig mc = tiny(cases[k].type, cases[k].tied, false);
        EstModel em;
        CHECK(est_model_from_config(&em, &mc, "tiny") == 0);
        AdapterConfig c;
        adapter_config_defaults(&c, METHOD_LORA);
        c.r = 3;
        if (cases[k].bias) c.bias = BIAS_ALL;
        adapter_config_set_targets(&c, cases[k].targets);
        adapter_config_add_module_to_save(&c, cases[k].save);
        Model *m = model_create_random(&mc, 7);
        CHECK_MSG(adapters_attach(m, &c, 3) == 0, "%s", peft_last_error());
        Estimate e;
        CHECK_MSG(estimate_compute(&e, &em, METHOD_LORA, &c, 2, 8) == 0, "%s %s: %s", cases[k].type, cases[k].save, peft_last_error());
        CHECK_MSG(e.trainable == model_count_params(m, true), "%s %s: trainable %lld vs %ld", cases[k].type, cases[k].save,
                  (long long)e.trainable, model_count_params(m, true));
        const AdapterSet *set = m->adapters;
        int64_t own = 0;  // the adapter's own tensors (the trained base ones are the model's)
        for (int i = 0; i < set->n_params - set->n_base; i++) own += set->params[i]->numel;
        CHECK(set->n_base > 0);
        CHECK_MSG(e.cpu.weights == 4 * (em.n_params + own) && e.cpu.grads == 4 * e.trainable && e.cpu.optimizer == 8 * e.trainable,
                  "%s %s: CPU weights %lld, expected %lld", cases[k].type, cases[k].save, (long long)e.cpu.weights,
                  (long long)(4 * (em.n_params + own)));
        const char *dir = test_tmpdir();
        CHECK_MSG(adapters_save(m, dir) == 0, "%s", peft_last_error());
        char *path = path_join(dir, "adapter_model.safetensors");
        CHECK_MSG(file_size(path) == e.file_bytes, "%s %s: file %lld bytes, estimate %lld", cases[k].type, cases[k].save,
                  (long long)file_size(path), (long long)e.file_bytes);
        free(path);
        model_free(m);
        adapter_config_free(&c);
        est_model_free(&em);
    }
    // Tied embedding and head: refused by name, as adapters_attach refuses it; an entry naming nothing too.
    const char *refused[][3] = {{"gpt2", "wte", "ties its embedding and output head"}, {"llama", "lm_head", "ties its embedding and output head"},
                                {"llama", "no_such_module", "names no module"}};
    for (int k = 0; k < 3; k++) {
        ModelConfig mc = tiny(refused[k][0], k < 2, false);
        EstModel em;
        CHECK(est_model_from_config(&em, &mc, "tiny") == 0);
        AdapterConfig c;
        adapter_config_defaults(&c, METHOD_LORA);
        adapter_config_set_targets(&c, mc.arch == ARCH_GPT2 ? "c_attn" : "v_proj");
        adapter_config_add_module_to_save(&c, refused[k][1]);
        Model *m = model_create_random(&mc, 7);
        CHECK(adapters_attach(m, &c, 3) != 0 && strstr(peft_last_error(), refused[k][2]));
        Estimate e;
        CHECK_MSG(estimate_compute(&e, &em, METHOD_LORA, &c, 2, 8) != 0 && strstr(peft_last_error(), refused[k][2]), "%s: %s", refused[k][1],
                  peft_last_error());
        model_free(m);
        adapter_config_free(&c);
        est_model_free(&em);
    }
    // --quantize: a linear to save is refused (a trained full copy of a quantized linear is not implemented).
    ModelConfig mc = tiny("llama", false, false);
    EstModel em;
    CHECK(est_model_from_config(&em, &mc, "tiny") == 0);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    adapter_config_set_targets(&c, "v_proj");
    adapter_config_add_module_to_save(&c, "q_proj");
    Estimate e;
    CHECK(estimate_compute(&e, &em, METHOD_LORA, &c, 2, 8) == 0);
    CHECK(estimate_quantize(&e, &em, &c, QUANT_NF4, true) != 0 && strstr(peft_last_error(), "self_attn.q_proj is quantized"));
    adapter_config_free(&c);
    est_model_free(&em);
}

// The GPU column's arenas with modules_to_save (gpu_model.cu's plan(): a trained base tensor in the trainable
// arena, 18 B a value instead of 2; a fused group's frozen members riding with a trained one; a trained head's
// staged gradient [ldV, C] fp32), on shapes whose tensors are all multiples of 64 values (no alignment slack).
TEST(estimate_gpu_modules_to_save_arenas) {
    const struct { const char *type, *targets, *save; int64_t moved, pending; } cases[] = {
        {"gpt2", "c_attn", "ln_f", 2 * 64, 0},
        // q trains, k and v ride, with v's fused-input-gradient spare rows (round8(r 3) = 8 rows of C): 3 layers
        {"llama", "v_proj", "q_proj", 3 * (64 * 64 + 2 * 32 * 64 + 8 * 64), 0},
        {"llama", "v_proj", "lm_head", 64 * 64, 64 * 64},  // vocab 37, padded to 64 rows
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        ModelConfig mc = tiny(cases[k].type, false, false);
        mc.n_embd = 64;
        mc.head_dim = 16;
        mc.n_inner = 128;
        EstModel em;
        CHECK(est_model_from_config(&em, &mc, "tiny64") == 0);
        Estimate e[2];
        for (int with = 0; with < 2; with++) {
            AdapterConfig c;
            adapter_config_defaults(&c, METHOD_LORA);
            c.r = 3;
            adapter_config_set_targets(&c, cases[k].targets);
            if (with) adapter_config_add_module_to_save(&c, cases[k].save);
            CHECK_MSG(estimate_compute(&e[with], &em, METHOD_LORA, &c, 2, 64) == 0, "%s", peft_last_error());
            adapter_config_free(&c);
        }
        int64_t moved = cases[k].moved, pending = cases[k].pending;
        CHECK_MSG(e[1].gpu.grads - e[0].gpu.grads == 4 * moved + 4 * pending, "%s %s: gradients %lld more", cases[k].type, cases[k].save,
                  (long long)(e[1].gpu.grads - e[0].gpu.grads));
        CHECK(e[1].gpu.weights - e[0].gpu.weights == (6 - 2) * moved && e[1].gpu.optimizer - e[0].gpu.optimizer == 8 * moved);
        est_model_free(&em);
    }
}

// PiSSA / OLoRA: the same trainable tensors, and the file peft train saves (converted, rank 2r) as predicted.
TEST(estimate_lora_init_converted_file) {
    ModelConfig mc = tiny("llama", false, false);
    EstModel em;
    CHECK(est_model_from_config(&em, &mc, "tiny") == 0);
    const char *inits[] = {"true", "pissa", "olora"};
    for (int i = 0; i < 3; i++) {
        AdapterConfig c;
        adapter_config_defaults(&c, METHOD_LORA);
        c.r = 3;
        adapter_config_set_targets(&c, "q_proj,down_proj");
        CHECK(lora_init_parse(&c, inits[i], "test") == 0);
        Model *m = model_create_random(&mc, 7);
        CHECK_MSG(adapters_attach(m, &c, 3) == 0, "%s", peft_last_error());
        Estimate e;
        CHECK(estimate_compute(&e, &em, METHOD_LORA, &c, 2, 8) == 0 && e.trainable == model_count_params(m, true));
        const char *dir = test_tmpdir();
        CHECK(adapters_save(m, dir) == 0);
        char *path = path_join(dir, "adapter_model.safetensors");
        CHECK_MSG(file_size(path) == e.file_bytes, "%s: file %lld, estimate %lld", inits[i], (long long)file_size(path), (long long)e.file_bytes);
        free(path);
        model_free(m);
        adapter_config_free(&c);
    }
    est_model_free(&em);
}

TEST(estimate_targets_must_match) {
    EstModel em;
    CHECK(est_model_preset(&em, "gpt2") == 0);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    adapter_config_set_targets(&c, "query,value");
    Estimate e;
    CHECK(estimate_compute(&e, &em, METHOD_LORA, &c, 1, 16) != 0);
    CHECK(strstr(peft_last_error(), "matched no module") != NULL);
    adapter_config_free(&c);
    est_model_free(&em);
}

// AdaLoRA: A [r,in], E [r,1], B [out,r] at init_r; the final budget at target_r.
TEST(estimate_adalora_budget) {
    EstModel em;
    CHECK(est_model_preset(&em, "roberta-base") == 0);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_ADALORA);
    c.init_r = 12;
    c.target_r = 8;
    c.r = 12;
    adapter_config_set_targets(&c, "query,value");
    Estimate e;
    CHECK(estimate_compute(&e, &em, METHOD_ADALORA, &c, 1, 16) == 0);
    CHECK(e.trainable == 24LL * 12 * (768 + 768 + 1));
    CHECK(e.adalora_budget_ranks == 24 * 8);
    CHECK(e.adalora_final_params == 24LL * 8 * (768 + 768 + 1));
    adapter_config_free(&c);
    est_model_free(&em);
}

#if defined(__SANITIZE_ADDRESS__)
#define EST_NO_MALLINFO 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EST_NO_MALLINFO 1
#endif
#endif

// The CPU activation count is what transformer.c allocates: measure the heap around a forward.
TEST(estimate_cpu_activations_match_allocations) {
#if defined(EST_NO_MALLINFO) || !defined(__GLIBC__) || __GLIBC__ < 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ < 33)
    SKIP("needs glibc mallinfo2 and no sanitizer");
#else
    const char *types[] = {"gpt2", "llama"};
    for (int k = 0; k < 2; k++) {
        ModelConfig mc = tiny(types[k], k == 0, false);
        Model *m = model_create_random(&mc, 5);
        int B = 3, T = 16, N = B * T;
        int32_t ids[48], labels[48];
        for (int i = 0; i < N; i++) { ids[i] = (i * 5 + 1) % mc.vocab_size; labels[i] = ids[i]; }
        CHECK(!isnan(model_forward(m, ids, labels, B, T)));  // warm up BLAS / OpenMP
        model_backward(m);
        activations_free(&m->act, mc.n_layer);
        struct mallinfo2 before = mallinfo2();
        CHECK(!isnan(model_forward(m, ids, labels, B, T)));
        struct mallinfo2 after = mallinfo2();
        int64_t used = (int64_t)(after.uordblks + after.hblkhd) - (int64_t)(before.uordblks + before.hblkhd);
        EstModel em;
        CHECK(est_model_from_config(&em, &mc, "tiny") == 0);
        // forward allocates everything but backward's dres and d_norm [N,C] each
        int64_t expect = est_cpu_activation_bytes(&em, B, T) - 2LL * N * mc.n_embd * 4;
        int64_t slack = 64LL * (20 + 16 * mc.n_layer);  // malloc chunk headers and rounding
        CHECK_MSG(used >= expect && used <= expect + slack, "%s: heap grew %lld bytes, estimate %lld", types[k], (long long)used,
                  (long long)expect);
        est_model_free(&em);
        model_free(m);
    }
    // An encoder (encoder.c's model_classify): the same buffers but logits [B, num_labels] and the head's rows.
    ModelConfig mc;
    CHECK(config_parse(&mc, "{\"model_type\": \"roberta\", \"vocab_size\": 30, \"hidden_size\": 16, \"num_hidden_layers\": 2,"
                            " \"num_attention_heads\": 4, \"intermediate_size\": 24, \"max_position_embeddings\": 20,"
                            " \"type_vocab_size\": 1, \"pad_token_id\": 1, \"num_labels\": 3}", "r.json") == 0);
    Model *m = model_create_random(&mc, 5);
    int B = 3, T = 8, N = B * T, NL = 3, C = mc.n_embd;
    int32_t ids[24], mask[24];
    float y[3] = {0, 2, 1};
    for (int i = 0; i < N; i++) { ids[i] = 3 + i % 20; mask[i] = 1; }
    ClassifyBatch b = {ids, mask, NULL, y, true, B, T};
    CHECK(!isnan(model_classify(m, &b)));  // warm up BLAS / OpenMP
    activations_free(&m->act, mc.n_layer);
    struct mallinfo2 before = mallinfo2();
    CHECK(!isnan(model_classify(m, &b)));
    struct mallinfo2 after = mallinfo2();
    int64_t used = (int64_t)(after.uordblks + after.hblkhd) - (int64_t)(before.uordblks + before.hblkhd);
    EstModel em;
    CHECK(est_model_from_config(&em, &mc, "tiny") == 0);
    // forward allocates everything but encoder_backward's dres [N,C], d_in, d_pre, d_act [B,C] and dlogits [B,NL]
    int64_t expect = est_cpu_activation_bytes(&em, B, T) - 4LL * (N * C + 3 * B * C + B * NL);
    int64_t slack = 64LL * (30 + 16 * mc.n_layer);
    CHECK_MSG(used >= expect && used <= expect + slack, "roberta: heap grew %lld bytes, estimate %lld", (long long)used, (long long)expect);
    est_model_free(&em);
    model_free(m);
#endif
}

// The GPU column models what the CUDA backend allocates: it must reproduce the peaks bench_gpu
// measured on an H100 (docs/gpu-bench.md, gpu_peak_bytes, GiB to 2 decimals) for every row.
TEST(estimate_gpu_matches_measured_peaks) {
    static const char *llama_json = "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":2048,\"intermediate_size\":5632,"
                                    "\"num_hidden_layers\":22,\"num_attention_heads\":32,\"num_key_value_heads\":4,"
                                    "\"max_position_embeddings\":2048}";
    static const struct { bool llama; MethodId method; int r; const char *targets; double measured_gib; } rows[] = {
        {false, METHOD_FULL, 0, NULL, 4.70},
        {false, METHOD_LORA, 8, "c_attn", 2.14},
        {false, METHOD_LORA, 16, "c_attn,c_proj,c_fc", 2.75},
        {false, METHOD_VERA, 256, "c_attn,c_proj,c_fc", 2.94},
        {false, METHOD_ADALORA, 12, "c_attn,c_proj,c_fc", 2.75},
        {true, METHOD_LORA, 8, "q_proj,v_proj", 9.67},
        {true, METHOD_LORA, 16, "all-linear", 11.80},
        {true, METHOD_VERA, 256, "all-linear", 12.22},
        {true, METHOD_ADALORA, 12, "all-linear", 11.81},
        {true, METHOD_FULL, 0, NULL, 28.17},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
        EstModel em;
        if (rows[i].llama) {
            ModelConfig mc;
            CHECK(config_parse(&mc, llama_json, "tinyllama") == 0);
            CHECK(est_model_from_config(&em, &mc, "tinyllama") == 0);
        } else CHECK(est_model_preset(&em, "gpt2") == 0);
        AdapterConfig c;
        adapter_config_defaults(&c, rows[i].method == METHOD_VERA ? METHOD_VERA : rows[i].method == METHOD_ADALORA ? METHOD_ADALORA : METHOD_LORA);
        if (rows[i].method == METHOD_ADALORA) { c.init_r = c.r = rows[i].r; c.target_r = 8; }
        else if (rows[i].r) c.r = rows[i].r;
        if (rows[i].targets) adapter_config_set_targets(&c, rows[i].targets);
        Estimate e;
        CHECK_MSG(estimate_compute(&e, &em, rows[i].method, &c, rows[i].llama ? 4 : 8, rows[i].llama ? 2048 : 1024) == 0, "%s",
                  peft_last_error());
        double gib = e.gpu.total / 1073741824.0;
        CHECK_MSG(fabs(gib - rows[i].measured_gib) <= 0.006, "row %zu: estimate %.3f GiB, measured %.2f GiB", i, gib, rows[i].measured_gib);
        adapter_config_free(&c);
        est_model_free(&em);
    }
}

// DoRA on the GPU keeps nothing per token beyond LoRA's (the backward reads its direction back from the kept
// outputs, gpu_dora.cu): over LoRA at the same rank, the magnitudes (trainable), one fp32 norm per output row,
// and the norm's scratch A A^T [r, r] (padded to 64 floats) + X [out, r] of the widest module (gate, up: 5632).
TEST(estimate_gpu_dora_over_lora) {
    static const char *llama_json = "{\"model_type\":\"llama\",\"vocab_size\":32000,\"hidden_size\":2048,\"intermediate_size\":5632,"
                                    "\"num_hidden_layers\":22,\"num_attention_heads\":32,\"num_key_value_heads\":4,"
                                    "\"max_position_embeddings\":2048}";
    ModelConfig mc;
    CHECK(config_parse(&mc, llama_json, "tinyllama") == 0);
    EstModel em;
    CHECK(est_model_from_config(&em, &mc, "tinyllama") == 0);
    Estimate e[2];
    for (int k = 0; k < 2; k++) {
        AdapterConfig c;
        adapter_config_defaults(&c, METHOD_LORA);
        c.r = 16;
        adapter_config_set_targets(&c, "all-linear");
        CHECK(estimate_compute(&e[k], &em, k ? METHOD_DORA : METHOD_LORA, &c, 4, 2048) == 0);
        adapter_config_free(&c);
    }
    int64_t outs = 22LL * (2048 + 256 + 256 + 2048 + 5632 + 5632 + 2048);
    CHECK_MSG(e[1].gpu.activations - e[0].gpu.activations == 4 * outs, "DoRA's activations %lld over LoRA's",
              (long long)(e[1].gpu.activations - e[0].gpu.activations));
    CHECK(e[1].gpu.workspace - e[0].gpu.workspace == 4 * (256 + 5632 * 16));
    CHECK(e[1].trainable - e[0].trainable == outs);
    est_model_free(&em);
}

// --recompute (gpu.h's GpuRecompute) on the QLoRA run: Llama-2-7B, nf4, LoRA r64 on every linear, 1 x 2048.
// Without it the GPU column is the measured 14.42 GiB (docs/gpu-bench.md); layer keeps of 32 blocks' activations
// only the inputs, a hand count of what 31 blocks no longer hold; mlp in between.
TEST(estimate_gpu_recompute) {
    EstModel em;
    CHECK(est_model_preset(&em, "llama-2-7b") == 0);
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    c.r = 64;
    adapter_config_set_targets(&c, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj");
    Estimate e[3];
    for (int mode = 0; mode < 3; mode++) {
        CHECK(estimate_compute(&e[mode], &em, METHOD_LORA, &c, 1, 2048) == 0);
        estimate_quantize(&e[mode], &em, &c, QUANT_NF4, true);
        estimate_recompute(&e[mode], &em, &c, mode);
    }
    CHECK_MSG(fabs(e[0].gpu.total / 1073741824.0 - 14.42) <= 0.006, "no recompute: %.3f GiB", e[0].gpu.total / 1073741824.0);
    int64_t N = 2048, C = 4096, I = 11008, NH = 32;
    // per block: the residual after attention, q|k|v, the attention output, gate|up, fp32 statistics and
    // log-sum-exp; the SwiGLU output (down is adapted); h of q|k|v (r 192), o (64), gate|up (128), down (64)
    int64_t block = 2 * N * (C + 3 * C + C + 2 * I) + 4 * N * (4 + NH), act = 2 * N * I, h = 2 * N * (192 + 64 + 128 + 64);
    CHECK(e[0].gpu.activations - e[2].gpu.activations == 31 * block + 32 * act + 31 * h);
    CHECK(e[0].gpu.activations - e[1].gpu.activations == 31 * 2 * N * 2 * I + 32 * act);
    CHECK(e[2].gpu.total < 10.0 * 1073741824.0);
    CHECK(e[2].gpu.weights == e[0].gpu.weights && e[2].gpu.workspace == e[0].gpu.workspace);
    CHECK(e[2].gpu_full.activations < e[1].gpu_full.activations && e[1].gpu_full.activations < e[0].gpu_full.activations);
    adapter_config_free(&c);
    est_model_free(&em);
}
