// peft estimate --model NAME|config.json|DIR --method METHOD [--r N] [--targets LIST]
//               [--batch N] [--context N] [--json]
// Trainable parameters, the adapter file's size and the training memory of a method, next to full
// fine-tuning's, without loading or allocating the model.
#include "peft.h"
#include "cli.h"
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// 1234567 -> "1,234,567"
static const char *grouped(int64_t n, char *buf) {
    char raw[32];
    int len = snprintf(raw, sizeof raw, "%lld", (long long)n), o = 0;
    for (int i = 0; i < len; i++) {
        buf[o++] = raw[i];
        if (raw[i] != '-' && (len - i - 1) % 3 == 0 && i < len - 1) buf[o++] = ',';
    }
    buf[o] = 0;
    return buf;
}

static const char *human(int64_t bytes, char *buf) {
    double b = (double)bytes;
    if (b >= 1024.0 * 1024 * 1024 * 1024) snprintf(buf, 32, "%.2f TiB", b / (1024.0 * 1024 * 1024 * 1024));
    else if (b >= 1024.0 * 1024 * 1024) snprintf(buf, 32, "%.2f GiB", b / (1024.0 * 1024 * 1024));
    else if (b >= 1024.0 * 1024) snprintf(buf, 32, "%.2f MiB", b / (1024.0 * 1024));
    else if (b >= 1024.0) snprintf(buf, 32, "%.2f KiB", b / 1024.0);
    else snprintf(buf, 32, "%lld B", (long long)bytes);
    return buf;
}

static cJSON *mem_json(const EstMemory *m) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "weights", (double)m->weights);
    cJSON_AddNumberToObject(j, "gradients", (double)m->grads);
    cJSON_AddNumberToObject(j, "optimizer", (double)m->optimizer);
    cJSON_AddNumberToObject(j, "activations", (double)m->activations);
    cJSON_AddNumberToObject(j, "workspace", (double)m->workspace);
    cJSON_AddNumberToObject(j, "total", (double)m->total);
    return j;
}

// What the memory columns count, one line each (joined for --json).
static const char *const CPU_NOTES[] = {
    "fp32: weights 4 B/param; each trainable adds its gradient 4 B and AdamW m, v 8 B (AdaLoRA: + 16 B of allocator scores, doubles)",
    "activations: the buffers transformer.c allocates for B x T tokens (per layer: residuals, norms and their statistics, q/k/v,",
    "  attention probabilities [B,NH,T,T], attention output, MLP activations; logits [N,V]; 5 scratch rows; backward's dres and d_norm)",
    "  plus each adapted module's buffers (h [N,r]; VeRA/AdaLoRA another [N,r]; DoRA [N,out]; dropout(x) [N,in] when dropout > 0)",
    "workspace: the largest short-lived buffers of an adapted module's backward (dh [N,r]; VeRA: + its scaled B [out,r])",
    "not counted: the attention backward's [T,T] per thread, OpenBLAS's GEMM buffers (a few MiB per thread), the data set",
    NULL,
};
static const char *const GPU_NOTES[] = {
    "what this program's CUDA backend (--device cuda, bf16) allocates: frozen weights bf16 2 B/param; each trainable",
    "  fp32 master 4 B + gradient 4 B + AdamW m, v 8 B + a bf16 working copy 2 B (AdaLoRA: + 8 B of fp32 scores)",
    "activations: bf16, flash attention (no [T,T] scores); per layer the residual stream, q|k|v, the attention output,",
    "  the MLP pre-activation, fp32 norm statistics and log-sum-exp, h [N,R] per adapted group; backward's buffers;",
    "  one classifier chunk of logits (at most 128 MiB), never [N,V]; with dropout one more [N, widest input]",
    "workspace: cuBLASLt's 32 MiB (and the 64 MiB upload staging buffer when it sets the peak)",
    "--quantize: the blocks' linears as codes + fp32 block scales, dequantized group by group into one bf16 scratch (workspace)",
    "not counted: the CUDA context and cuBLASLt's own allocations (~0.5-1 GiB), the allocator's rounding",
    NULL,
};

static char *join_notes(const char *const *notes) {
    size_t len = 1;
    for (int i = 0; notes[i]; i++) len += strlen(notes[i]) + 2;
    char *s = xmalloc(len), *p = s;
    for (int i = 0; notes[i]; i++) {
        const char *n = notes[i];
        bool continued = *n == ' ';
        while (*n == ' ') n++;
        p += sprintf(p, "%s%s", !i ? "" : continued ? " " : "; ", n);
    }
    *p = 0;
    return s;
}

int cmd_estimate(int argc, char **argv) {
    const char *model = NULL, *method_s = method_name(METHOD_LORA), *targets = NULL, *lora_options = NULL;
    int r = -1, init_r = -1, target_r = -1, batch = 8, context = 0;
    float dropout = 0;
    bool json = false, no_save_projection = false, no_double_quant = false;
    const char *quantize = NULL, *init_weights = NULL, *recompute = "none";
    char methods[128], help_method[160];
    method_names(methods, sizeof methods, " | ", " | ", LIST_NAMES);
    snprintf(help_method, sizeof help_method, "%s (default %s)", methods, method_s);
    Option opts[20] = {
        {"model", OPT_STRING, &model, "preset (roberta-base, roberta-large, gpt2, gpt2-medium, gpt2-large, gpt3-175b, "
                                      "llama-2-7b, llama-2-13b, tinyllama-1.1b), a config.json, or an HF model folder"},
        {"method", OPT_STRING, &method_s, help_method},
        {"r", OPT_INT, &r, "rank (LoRA default 8, VeRA 256; AdaLoRA: same as --init-r)"},
        {"init-r", OPT_INT, &init_r, "AdaLoRA initial rank (default 12)"},
        {"target-r", OPT_INT, &target_r, "AdaLoRA final average rank (default 8)"},
        {"targets", OPT_STRING, &targets, "target modules: comma list, \"all-linear\", or re:REGEX (default: PEFT's for the model)"},
        {"dropout", OPT_FLOAT, &dropout, "adapter dropout (adds dropout(x) buffers to the CPU/GPU activations)"},
        {"lora-options", OPT_STRING, &lora_options, "JSON file of PEFT's exclude_modules, layers_to_transform, layers_pattern, "
                                                    "rank_pattern, alpha_pattern, bias"},
        {"init-lora-weights", OPT_STRING, &init_weights, "LoRA: as peft train's (pissa, pissa_niter_K, olora: the file holds rank 2r)"},
        {"no-save-projection", OPT_FLAG, &no_save_projection, "VeRA: the file omits vera_A/vera_B (both sizes are shown anyway)"},
        {"batch", OPT_INT, &batch, "sequences per step (default 8)"},
        {"context", OPT_INT, &context, "tokens per sequence (default min(512, the model's context))"},
        {"recompute", OPT_STRING, &recompute, "GPU column: as peft train --recompute: none (default), mlp or layer"},
        {"json", OPT_FLAG, &json, "print JSON for scripts"},
    };
    int n_opts = 0, qt;
    bool nested;
    while (opts[n_opts].name) n_opts++;
    n_opts += quant_options(opts + n_opts, &quantize, &no_double_quant);
    if (parse_options("estimate", argc, argv, opts, n_opts, NULL, 0, NULL)) return 2;
    if (quant_resolve("estimate", quantize, no_double_quant, &qt, &nested)) return 2;
    if (!model) { fprintf(stderr, "peft estimate: --model NAME|config.json|DIR is required\n"); return 2; }
    MethodId method;
    if (method_parse(method_s, &method)) {
        fprintf(stderr, "peft estimate: --method must be %s (got \"%s\")\n", method_names(methods, sizeof methods, ", ", " or ", LIST_NAMES), method_s);
        return 2;
    }
    if (batch <= 0) { fprintf(stderr, "peft estimate: --batch must be positive\n"); return 2; }
    static const char *const recompute_modes[] = {"none", "mlp", "layer"};  // gpu.h's GpuRecompute, in order
    int rc_mode = -1;
    for (int i = 0; i < 3; i++)
        if (!strcmp(recompute, recompute_modes[i])) rc_mode = i;
    if (rc_mode < 0) { fprintf(stderr, "peft estimate: --recompute must be none, mlp or layer (got \"%s\")\n", recompute); return 2; }
    if (!(dropout >= 0 && dropout < 1)) { fprintf(stderr, "peft estimate: --dropout must be in [0, 1)\n"); return 2; }
    if (qt && method == METHOD_FULL) { fprintf(stderr, "peft estimate: --quantize freezes the base: full fine-tuning is refused with it\n"); return 2; }

    EstModel em;
    if (est_model_load(&em, model)) return fail_with_library_error();
    if (context == 0) context = em.max_context < 512 ? em.max_context : 512;
    if (context <= 0) { est_model_free(&em); fprintf(stderr, "peft estimate: --context must be positive\n"); return 2; }
    if (context > em.max_context)
        fprintf(stderr, "peft estimate: warning: context %d exceeds %s's %d positions\n", context, em.name, em.max_context);

    AdapterConfig c;
    adapter_config_defaults(&c, method);
    if (method == METHOD_ADALORA) {
        if (init_r < 0 && r >= 0) init_r = r;
        if (init_r >= 0) c.init_r = init_r;
        if (target_r >= 0) c.target_r = target_r;
        c.r = c.init_r;
    } else if (r >= 0) c.r = r;
    c.dropout = dropout;
    c.save_projection = !no_save_projection;
    if (init_weights && (method != METHOD_LORA || lora_init_parse(&c, init_weights, "--init-lora-weights"))) {
        if (method != METHOD_LORA) peft_fail("--init-lora-weights is a LoRA option");
        adapter_config_free(&c);
        est_model_free(&em);
        return fail_with_library_error();
    }
    if (targets) adapter_config_set_targets(&c, targets);
    else if (em.family == EST_ENCODER_ROBERTA || em.family == EST_DECODER_GPT3) adapter_config_set_targets(&c, "query,value");
    else adapter_config_default_targets(&c, &em.cfg);
    if (lora_options && adapter_layout_read_file(&c, lora_options)) {
        adapter_config_free(&c);
        est_model_free(&em);
        return fail_with_library_error();
    }

    Estimate e;
    if (estimate_compute(&e, &em, method, &c, batch, context)) {
        adapter_config_free(&c);
        est_model_free(&em);
        return fail_with_library_error();
    }
    if (qt && estimate_quantize(&e, &em, &c, qt, nested)) {
        adapter_config_free(&c);
        est_model_free(&em);
        return fail_with_library_error();
    }
    estimate_recompute(&e, &em, &c, rc_mode);
    char a[48], b[48], h1[32], h2[32], h3[32], h4[32];
    const char *mname = method_get(method)->title;
    int64_t all = e.base_params + (method == METHOD_FULL ? 0 : e.trainable);
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON *jm = cJSON_AddObjectToObject(j, "model");
        cJSON_AddStringToObject(jm, "name", em.name);
        cJSON_AddStringToObject(jm, "description", em.description);
        cJSON_AddNumberToObject(jm, "layers", em.cfg.n_layer);
        cJSON_AddNumberToObject(jm, "hidden", em.cfg.n_embd);
        cJSON_AddNumberToObject(jm, "heads", em.cfg.n_head);
        cJSON_AddNumberToObject(jm, "kv_heads", em.cfg.n_kv_head);
        cJSON_AddNumberToObject(jm, "mlp", em.cfg.n_inner);
        cJSON_AddNumberToObject(jm, "vocab", em.cfg.vocab_size);
        cJSON_AddNumberToObject(jm, "linear_modules", em.n_linears);
        cJSON_AddNumberToObject(jm, "parameters", (double)e.base_params);
        cJSON *jx = cJSON_AddObjectToObject(j, "method");
        cJSON_AddStringToObject(jx, "name", method_name(method));
        cJSON_AddStringToObject(jx, "peft_type", method == METHOD_FULL ? "none" : method_get(method)->peft_type);
        if (method != METHOD_FULL) {
            if (method == METHOD_ADALORA) {
                cJSON_AddNumberToObject(jx, "init_r", c.init_r);
                cJSON_AddNumberToObject(jx, "target_r", c.target_r);
            } else cJSON_AddNumberToObject(jx, "r", c.r);
            if (c.target_regex) cJSON_AddStringToObject(jx, "target_modules", c.target_regex);
            else cJSON_AddItemToObject(jx, "target_modules", cJSON_CreateStringArray((const char *const *)c.targets, c.n_targets));
            cJSON_AddNumberToObject(jx, "adapted_modules", e.n_adapted);
            cJSON_AddNumberToObject(jx, "dropout", c.dropout);
        }
        cJSON_AddNumberToObject(j, "trainable_parameters", (double)e.trainable);
        cJSON_AddNumberToObject(j, "trainable_percent", 100.0 * (double)e.trainable / (double)all);
        if (method == METHOD_VERA) {
            cJSON *jv = cJSON_AddObjectToObject(j, "vera_projections");
            cJSON_AddNumberToObject(jv, "parameters", (double)e.vera_projection);
            cJSON_AddNumberToObject(jv, "max_in", e.vera_max_in);
            cJSON_AddNumberToObject(jv, "max_out", e.vera_max_out);
        }
        if (method == METHOD_ADALORA) {
            cJSON *ja = cJSON_AddObjectToObject(j, "adalora_final");
            cJSON_AddNumberToObject(ja, "budget_ranks", (double)e.adalora_budget_ranks);
            cJSON_AddNumberToObject(ja, "parameters_even", (double)e.adalora_final_params);
            cJSON_AddNumberToObject(ja, "file_bytes_even", (double)e.adalora_final_file_bytes);
        }
        cJSON *jf = cJSON_AddObjectToObject(j, "file");
        cJSON_AddStringToObject(jf, "name", method == METHOD_FULL ? "model.safetensors" : "adapter_model.safetensors");
        cJSON_AddNumberToObject(jf, "bytes", (double)e.file_bytes);
        cJSON_AddBoolToObject(jf, "exact", method != METHOD_FULL);
        cJSON_AddNumberToObject(jf, "fp16_data_bytes", (double)(2 * e.trainable));
        if (method == METHOD_VERA) {
            cJSON_AddNumberToObject(jf, "bytes_with_projection", (double)e.file_bytes_with_projection);
            cJSON_AddNumberToObject(jf, "bytes_without_projection", (double)e.file_bytes_without_projection);
        }
        if (qt) {
            cJSON *jq = cJSON_AddObjectToObject(j, "quantization");
            cJSON_AddStringToObject(jq, "type", quant_type_name(qt));
            cJSON_AddBoolToObject(jq, "double_quant", nested);
            cJSON_AddNumberToObject(jq, "linear_bytes", (double)e.quant_bytes);
            cJSON_AddNumberToObject(jq, "linear_fp32_bytes", (double)e.quant_fp32_bytes);
            cJSON_AddStringToObject(jq, "applies_to", "cpu_fp32 and gpu_bf16");
        }
        cJSON *jmem = cJSON_AddObjectToObject(j, "memory");
        cJSON_AddNumberToObject(jmem, "batch", batch);
        cJSON_AddNumberToObject(jmem, "context", context);
        cJSON *jc = cJSON_AddObjectToObject(jmem, "cpu_fp32");
        cJSON_AddItemToObject(jc, "method", mem_json(&e.cpu));
        cJSON_AddItemToObject(jc, method_name(METHOD_FULL), mem_json(&e.cpu_full));
        char *notes = join_notes(CPU_NOTES);
        cJSON_AddStringToObject(jc, "assumptions", notes);
        free(notes);
        cJSON *jg = cJSON_AddObjectToObject(jmem, "gpu_bf16");
        cJSON_AddStringToObject(jg, "recompute", recompute);
        cJSON_AddItemToObject(jg, "method", mem_json(&e.gpu));
        cJSON_AddItemToObject(jg, method_name(METHOD_FULL), mem_json(&e.gpu_full));
        notes = join_notes(GPU_NOTES);
        cJSON_AddStringToObject(jg, "assumptions", notes);
        free(notes);
        char *text = cJSON_Print(j);
        printf("%s\n", text);
        free(text);
        cJSON_Delete(j);
    } else {
        const ModelConfig *mc = &em.cfg;
        printf("model         %s: %s\n", em.name, em.description);
        printf("shape         %d layers, hidden %d, %d heads (%d kv), mlp %d, vocab %d, %d linear modules\n", mc->n_layer,
               mc->n_embd, mc->n_head, mc->n_kv_head, mc->n_inner, mc->vocab_size, em.n_linears);
        printf("parameters    %s\n", grouped(e.base_params, a));
        if (method == METHOD_FULL) printf("method        full fine-tuning (every parameter trainable)\n");
        else {
            printf("method        %s ", mname);
            if (method == METHOD_ADALORA) printf("init_r=%d target_r=%d", c.init_r, c.target_r);
            else printf("r=%d", c.r);
            printf(" on %d modules (", e.n_adapted);
            if (c.target_regex) printf("regex %s", c.target_regex);
            for (int i = 0; i < c.n_targets; i++) printf("%s%s", i ? ", " : "", c.targets[i]);
            if (c.dropout > 0) printf("), dropout %g\n", c.dropout);
            else printf(")\n");
        }
        printf("trainable     %s (%.4f%% of %s)\n", grouped(e.trainable, a), 100.0 * (double)e.trainable / (double)all, grouped(all, b));
        if (method == METHOD_VERA)
            printf("projections   %s frozen (vera_A [%d, %d] + vera_B [%d, %d], shared)\n", grouped(e.vera_projection, a), c.r,
                   e.vera_max_in, e.vera_max_out, c.r);
        if (method == METHOD_ADALORA)
            printf("final budget  %s ranks (target_r %d x %d modules): %s parameters when spread evenly\n",
                   grouped(e.adalora_budget_ranks, a), c.target_r, e.n_adapted, grouped(e.adalora_final_params, b));
        if (method == METHOD_FULL)
            printf("checkpoint    %s bytes (%s; model.safetensors fp32 data, header not counted)\n", grouped(e.file_bytes, a), human(e.file_bytes, h1));
        else if (method == METHOD_VERA) {
            printf("adapter file  %s bytes (%s) adapter_model.safetensors fp32, with the projections (save_projection=true)\n",
                   grouped(e.file_bytes_with_projection, a), human(e.file_bytes_with_projection, h1));
            printf("              %s bytes (%s) without them (save_projection=false)\n", grouped(e.file_bytes_without_projection, a),
                   human(e.file_bytes_without_projection, h1));
        } else {
            printf("adapter file  %s bytes (%s) adapter_model.safetensors fp32", grouped(e.file_bytes, a), human(e.file_bytes, h1));
            if (method == METHOD_ADALORA) printf(" at init_r; %s bytes at the final budget", grouped(e.adalora_final_file_bytes, b));
            printf("\n              in fp16/bf16: %s bytes of tensor data (%s)\n", grouped(2 * e.trainable, a), human(2 * e.trainable, h1));
        }
        if (qt)
            printf("quantized     %d linears %s%s: %s (%s in fp32); one dequantized at a time (workspace; GPU: a group, in bf16)\n",
                   em.n_linears, quant_type_name(qt), nested ? " + double quantization" : "", human(e.quant_bytes, h1), human(e.quant_fp32_bytes, h2));
        printf("\ntraining memory, batch %d x context %d (%d tokens per step)\n", batch, context, batch * context);
        const char *col = method == METHOD_FULL ? method_name(METHOD_FULL) : mname;
        printf("  %-13s %29s   %29s\n", "", "---------- CPU fp32 ---------", "---------- GPU bf16 ---------");
        printf("  %-13s %14s %14s   %14s %14s\n", "", col, "full FT", col, "full FT");
        const struct { const char *name; int64_t v[4]; } rows[] = {
            {"weights", {e.cpu.weights, e.cpu_full.weights, e.gpu.weights, e.gpu_full.weights}},
            {"gradients", {e.cpu.grads, e.cpu_full.grads, e.gpu.grads, e.gpu_full.grads}},
            {"optimizer", {e.cpu.optimizer, e.cpu_full.optimizer, e.gpu.optimizer, e.gpu_full.optimizer}},
            {"activations", {e.cpu.activations, e.cpu_full.activations, e.gpu.activations, e.gpu_full.activations}},
            {"workspace", {e.cpu.workspace, e.cpu_full.workspace, e.gpu.workspace, e.gpu_full.workspace}},
            {"total", {e.cpu.total, e.cpu_full.total, e.gpu.total, e.gpu_full.total}},
        };
        for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
            printf("  %-13s %14s %14s   %14s %14s\n", rows[i].name, human(rows[i].v[0], h1), human(rows[i].v[1], h2),
                   human(rows[i].v[2], h3), human(rows[i].v[3], h4));
        printf("\nCPU column (this program):\n");
        for (int i = 0; CPU_NOTES[i]; i++) printf("  %s\n", CPU_NOTES[i]);
        if (em.family == EST_ENCODER_ROBERTA)
            printf("  (an encoder, %s: encoder.c's buffers, the same per layer; logits [B, num_labels], no d_norm)\n", em.name);
        if (em.family == EST_DECODER_GPT3)
            printf("  (this program trains GPT-2 and Llama-family models: for %s the CPU column counts what the GPT-2 path would keep)\n", em.name);
        printf("GPU column (this program's CUDA backend, bf16):\n");
        for (int i = 0; GPU_NOTES[i]; i++) printf("  %s\n", GPU_NOTES[i]);
        if (rc_mode == 1) printf("  --recompute mlp: one MLP pre-activation scratch instead of every layer's pre-activation and activation\n");
        if (rc_mode == 2) printf("  --recompute layer: of each block only its input is kept; one block's activations serve every layer\n");
    }
    adapter_config_free(&c);
    est_model_free(&em);
    return 0;
}
