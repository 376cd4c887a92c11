// peft info --model DIR [--adapter DIR]: load and validate everything, then describe it.
#include "peft.h"
#include "cli.h"
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

// 1234567 -> "1,234,567"
static const char *grouped(long n, char *buf) {
    char raw[32];
    int len = snprintf(raw, sizeof raw, "%ld", n), o = 0;
    for (int i = 0; i < len; i++) {
        buf[o++] = raw[i];
        if (raw[i] != '-' && (len - i - 1) % 3 == 0 && i < len - 1) buf[o++] = ',';
    }
    buf[o] = 0;
    return buf;
}

static long file_size(const char *dir, const char *name) {
    char *p = path_join(dir, name);
    struct stat st;
    long n = stat(p, &st) == 0 ? (long)st.st_size : -1;
    free(p);
    return n;
}

int cmd_info(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL;
    Option opts[] = {
        {"model", OPT_STRING, &model_dir, "HF model folder (config.json + safetensors)"},
        {"adapter", OPT_STRING, &adapter_dir, "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)"},
    };
    if (parse_options("info", argc, argv, opts, 2, NULL, 0, NULL)) return 2;
    if (!model_dir) { fprintf(stderr, "peft info: --model DIR is required\n"); return 2; }
    Model *m = model_load(model_dir);
    if (!m || (adapter_dir && adapters_load(m, adapter_dir))) { model_free(m); return fail_with_library_error(); }
    const ModelConfig *c = &m->cfg;
    char a[32], b[32];
    long base = model_count_params(m, false) - (m->adapters ? model_count_params(m, true) : 0);
    printf("model         %s\n", model_dir);
    printf("architecture  %s (model_type %s)\n", config_arch_name(c), c->model_type);
    printf("shape         %d layers, hidden %d, %d heads (%d kv), head_dim %d, mlp %d, vocab %d, context %d\n",
           c->n_layer, c->n_embd, c->n_head, c->n_kv_head, c->head_dim, c->n_inner, c->vocab_size, c->n_positions);
    printf("options       %s embeddings%s%s", c->tie_word_embeddings ? "tied" : "untied", c->qkv_bias ? ", qkv bias" : "",
           c->sliding_window ? ", sliding window " : "");
    if (c->sliding_window) printf("%d", c->sliding_window);
    if (c->arch == ARCH_LLAMA) printf(", rope theta %g%s", c->rope_theta, c->rope_type == ROPE_LLAMA3 ? " (llama3 scaling)" : c->rope_type == ROPE_LINEAR ? " (linear scaling)" : "");
    printf("\nparameters    %s (%.1f MB in fp32), all finite\n", grouped(base, a), base * 4 / 1e6);
    // The tokenizer must not produce ids the embedding does not have.
    int tok_ids = 0;
    if (tokenizer_files_exist(model_dir)) {
        Tokenizer *tok = tokenizer_load(model_dir);
        if (!tok) { model_free(m); return fail_with_library_error(); }
        tok_ids = tokenizer_vocab_size(tok);
        tokenizer_free(tok);
        printf("tokenizer     %s ids%s\n", grouped(tok_ids, a), tok_ids > c->vocab_size ? " (MORE than the model's vocabulary)" : "");
    } else printf("tokenizer     none\n");
    if (m->adapters) {
        const AdapterSet *s = m->adapters;
        long trainable = model_count_params(m, true);
        printf("adapter       %s r=%d", method_get(s->cfg.type)->peft_type, s->cfg.r);
        if (s->cfg.type != METHOD_VERA) printf(" alpha=%g", s->cfg.alpha);
        if (s->cfg.use_rslora) printf(" use_rslora");
        if (method_get(s->cfg.type)->variant_key) printf(" %s (%s)", method_get(s->cfg.type)->variant_key, method_get(s->cfg.type)->title);
        char init[32];
        if (s->cfg.type == METHOD_LORA && s->cfg.init != LORA_INIT_TRUE)  // PiSSA / OLoRA: the base was decomposed on load, as in PEFT
            printf(" init_lora_weights=%s%s", lora_init_text(&s->cfg, init, sizeof init), lora_init_changes_base(&s->cfg) ? " (base decomposed on load)" : "");
        printf(" on %d modules (", s->n);
        if (s->cfg.target_regex) printf("regex %s", s->cfg.target_regex);
        for (int i = 0; i < s->cfg.n_targets; i++) printf("%s%s", i ? ", " : "", s->cfg.targets[i]);
        char options[2048];
        adapter_layout_describe(&s->cfg, options, sizeof options);
        printf(")\n%s", options);
        if (s->cfg.task_type[0]) printf("task          %s\n", s->cfg.task_type);
        adapter_embed_describe_set(s, options, sizeof options);
        printf("%s", options);
        printf("trainable     %s (%.4f%% of %s)\n", grouped(trainable, a), 100.0 * trainable / (base + trainable), grouped(base + trainable, b));
        long bytes = file_size(adapter_dir, "adapter_model.safetensors");
        printf("adapter file  %s bytes (adapter_model.safetensors)\n", grouped(bytes, a));
    }
    int vocab = c->vocab_size;
    model_free(m);
    if (tok_ids > vocab) {
        peft_fail("%s: the tokenizer has %d ids but the model's vocabulary (config.json vocab_size) is %d: ids from %d on have no embedding",
                  model_dir, tok_ids, vocab, vocab);
        return fail_with_library_error();
    }
    return 0;
}
