// peft init: a new HF model folder with random weights (std 0.02), to pretrain from scratch (or, for
// --arch roberta or bert, a random sequence classifier of --labels classes: tests and benchmarks;
// bert needs --tokenizer-from a WordPiece tokenizer with [CLS], [SEP] and [PAD]).
// Without --tokenizer-from it gets a byte-level tokenizer (vocab 257); with it, the vocabulary is
// the tokenizer's (its largest id + 1) unless --vocab asks for more.
#include "byte_tokenizer.h"
#include "cli.h"
#include "estimate.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Copies dir/name when it exists.
static int copy_if_present(const char *from_dir, const char *to_dir, const char *name) {
    char *src = path_join(from_dir, name), *dst = path_join(to_dir, name);
    int rc = file_exists(src) ? copy_file(src, dst) : 0;
    free(src);
    free(dst);
    return rc;
}

int cmd_init(int argc, char **argv) {
    const char *arch = "gpt2", *out = NULL, *tok_from = NULL;
    int layers = 4, hidden = 128, heads = 4, kv_heads = 0, inner = 0, context = 256, vocab = 0, seed = 1, labels = 2;
    Option opts[] = {
        {"arch", OPT_STRING, &arch, "gpt2 | llama | mistral | qwen2 | roberta | bert (default gpt2)"},
        {"labels", OPT_INT, &labels, "roberta, bert: the classification head's outputs (default 2; 1: regression)"},
        {"layers", OPT_INT, &layers, "number of blocks (default 4)"},
        {"hidden", OPT_INT, &hidden, "hidden size (default 128)"},
        {"heads", OPT_INT, &heads, "attention heads (default 4)"},
        {"kv-heads", OPT_INT, &kv_heads, "key/value heads (Llama family; default = heads)"},
        {"inner", OPT_INT, &inner, "MLP size (default 4*hidden for GPT-2, 8/3*hidden for Llama)"},
        {"context", OPT_INT, &context, "context length (default 256)"},
        {"vocab", OPT_INT, &vocab, "vocabulary size (default: the tokenizer's)"},
        {"tokenizer-from", OPT_STRING, &tok_from, "copy tokenizer files from this model folder"},
        {"seed", OPT_INT, &seed, "random seed (default 1)"},
        {"out", OPT_STRING, &out, "folder to create"},
    };
    if (parse_options("init", argc, argv, opts, sizeof opts / sizeof *opts, NULL, 0, NULL)) return 2;
    if (!out) { fprintf(stderr, "peft init: --out DIR is required\n"); return 2; }
    bool gpt2 = !strcmp(arch, "gpt2"), roberta = !strcmp(arch, "roberta"), bert = !strcmp(arch, "bert"), encoder = roberta || bert;
    if (!gpt2 && !encoder && strcmp(arch, "llama") && strcmp(arch, "mistral") && strcmp(arch, "qwen2")) {
        fprintf(stderr, "peft init: unknown --arch %s (gpt2, llama, mistral, qwen2, roberta, bert)\n", arch);
        return 2;
    }
    if (encoder && (labels < 1 || labels > 65536)) { fprintf(stderr, "peft init: --labels must be in [1, 65536]\n"); return 2; }
    if (bert && !tok_from) { fprintf(stderr, "peft init: --arch bert needs --tokenizer-from a WordPiece tokenizer ([CLS], [SEP], [PAD])\n"); return 2; }
    if (hidden <= 0 || heads <= 0 || layers <= 0 || context <= 0 || hidden % heads) {
        fprintf(stderr, "peft init: sizes must be positive and --hidden divisible by --heads\n");
        return 2;
    }
    int tok_vocab = BYTE_TOKENIZER_VOCAB, bos = BYTE_TOKENIZER_EOS, eos = BYTE_TOKENIZER_EOS, pad = 0;
    if (tok_from) {
        Tokenizer *tok = tokenizer_load(tok_from);
        if (!tok) return fail_with_library_error();
        tok_vocab = tokenizer_vocab_size(tok);
        bos = tokenizer_bos(tok);
        eos = tokenizer_eos(tok);
        pad = tokenizer_token_id(tok, "[PAD]");
        tokenizer_free(tok);
        if (bert && pad < 0) { fprintf(stderr, "peft init: %s has no [PAD] token\n", tok_from); return 2; }
    }
    if (vocab && vocab < tok_vocab) {
        fprintf(stderr, "peft init: --vocab %d is smaller than the tokenizer's %d ids (%s)\n", vocab, tok_vocab, tok_from ? tok_from : "byte-level");
        return 2;
    }
    ModelConfig c = {0};
    snprintf(c.model_type, sizeof c.model_type, "%s", arch);
    c.arch = gpt2 ? ARCH_GPT2 : encoder ? ARCH_BERT : ARCH_LLAMA;
    c.n_layer = layers; c.n_embd = hidden; c.n_head = heads; c.n_kv_head = kv_heads ? kv_heads : heads;
    c.head_dim = hidden / heads;
    long long inner_default = gpt2 || encoder ? 4LL * hidden : (8LL * hidden / 3 + 7) / 8 * 8;  // too large: config_validate refuses --hidden
    c.n_inner = inner ? inner : (int)(inner_default > INT_MAX ? INT_MAX : inner_default);
    c.n_positions = context;
    c.vocab_size = vocab ? vocab : tok_vocab;
    c.norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.tie_word_embeddings = gpt2;
    c.qkv_bias = gpt2 || !strcmp(arch, "qwen2");
    c.o_bias = c.mlp_bias = gpt2;
    c.bos_token_id = bos;
    c.eos_token_id = eos;
    if (roberta) {  // RoBERTa's special ids (<s> 0, <pad> 1, </s> 2): bytes 0..2 of the byte-level tokenizer
        c.bos_token_id = 0;
        c.pad_token_id = 1;
        c.eos_token_id = 2;
        c.n_positions = context + 2;  // positions start after the padding id
        c.type_vocab_size = 1;
    }
    if (bert) {  // [CLS] and [SEP] come from the tokenizer; segments A and B
        c.bos_token_id = c.eos_token_id = -1;
        c.pad_token_id = pad;
        c.type_vocab_size = 2;
    }
    if (encoder) {
        c.gelu_exact = true;
        c.num_labels = labels;
        c.qkv_bias = c.o_bias = c.mlp_bias = true;
    }
    if (c.n_head % c.n_kv_head) { fprintf(stderr, "peft init: --heads must be divisible by --kv-heads\n"); return 2; }
    if (config_validate(&c, "peft init")) { fprintf(stderr, "%s\n", peft_last_error()); return 2; }
    EstModel em;
    if (est_model_from_config(&em, &c, out)) return fail_with_library_error();
    double bytes = 4.0 * (double)em.n_params, memory = (double)physical_memory_bytes();
    est_model_free(&em);
    if (memory > 0 && bytes > memory) {
        fprintf(stderr, "peft init: the model would take %.3g GB in fp32, more than this machine's memory (%.3g GB)\n", bytes / 1e9, memory / 1e9);
        return 2;
    }
    if (make_dir(out)) return fail_with_library_error();
    if (tok_from) {
        static const char *files[] = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "encoder.json", "vocab.bpe",
                                      "special_tokens_map.json", NULL};
        for (int i = 0; files[i]; i++)
            if (copy_if_present(tok_from, out, files[i])) return fail_with_library_error();
    } else if (byte_tokenizer_write(out)) return fail_with_library_error();
    Model *m = model_create_random(&c, (uint64_t)seed);
    int rc = model_save(m, out);
    long n = model_count_params(m, false);
    model_free(m);
    if (rc) return fail_with_library_error();
    printf("created %s: %s, %d layers, hidden %d, %ld parameters\n", out, config_arch_name(&c), layers, hidden, n);
    return 0;
}
