// tok_gguf.c: a Tokenizer as the vocabulary metadata of a GGUF file (tokenizer.ggml.*), for the
// one of llama.cpp's tokenizers (llama-vocab.cpp) that encodes text as we do:
//   byte-level BPE (GPT-2, Llama 3, Qwen2): model "gpt2", the merges, and the pre-tokenizer by the
//     name llama.cpp gives its built-in regex ("gpt-2", "llama-bpe", "qwen2");
//   SentencePiece-style BPE (Llama 2, Mistral: "▁" for space, byte fallback): model "llama", whose
//     tokenizer merges the adjacent pair that makes the highest-scoring token. A token's score is
//     minus the rank of the first merge that makes it, so the best pair is the one BPE merges first
//     (exact when every token is the merge of each of its splits that the vocabulary holds, which is
//     how HF converts SentencePiece models).
// Anything else is refused with the reason, as llama.cpp would encode it differently.
#include "gguf_writer.h"
#include "tokenizer_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// llama.cpp's token types (llama_token_type).
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define SPACE_MARK "\xE2\x96\x81"  // "▁"

// HF tokenizer.json's Split regexes before a ByteLevel step (use_regex false) that llama.cpp has
// built in, by the name GGUF gives them, and whether llama.cpp then takes a word found whole in the
// vocabulary as it is (ignore_merges).
static const struct {
    const char *pre, *pattern;
    bool ignore_merges;
} SPLITS[] = {
    {"llama-bpe", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", true},
    {"qwen2", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", false},
};

// llama.cpp's name for a byte-level tokenizer's pre-tokenizer, or NULL with an error.
static const char *byte_level_pre(const Tokenizer *t) {
    const PreStep *last = &t->pre[t->n_pre - 1];  // byte_level: the last step is ByteLevel
    const char *pre = NULL, *why = NULL;
    bool ignore_merges = false;
    if (t->n_pre == 1 && last->re && !strcmp(last->pattern, TOK_GPT2_PATTERN)) pre = "gpt-2";
    if (t->n_pre == 2 && t->pre[0].kind == PRE_SPLIT && !t->pre[0].literal && !last->re)
        for (size_t i = 0; i < sizeof SPLITS / sizeof *SPLITS; i++)
            if (!strcmp(t->pre[0].pattern, SPLITS[i].pattern)) {
                pre = SPLITS[i].pre;
                ignore_merges = SPLITS[i].ignore_merges;
            }
    if (t->n_norm) why = "a normalizer before byte-level BPE";
    else if (last->add_prefix_space) why = "ByteLevel's add_prefix_space";
    else if (!pre) why = "this pre-tokenizer (GGUF export knows GPT-2's, Llama 3's and Qwen2's byte-level ones)";
    else if (ignore_merges != t->ignore_merges) why = ignore_merges ? "ignore_merges false with this pre-tokenizer" : "ignore_merges true with this pre-tokenizer";
    if (why) {
        peft_fail("%s: %s has no llama.cpp counterpart", t->source, why);
        return NULL;
    }
    return pre;
}

// For SentencePiece-style BPE: whether llama.cpp must put a space before the text
// (tokenizer.ggml.add_space_prefix). 0, or -1 with an error when the pipeline is another one.
static int spm_space_prefix(const Tokenizer *t, bool *prefix) {
    bool ok = t->byte_fallback;
    for (int b = 0; b < 256 && ok; b++) ok = t->fallback_id[b] >= 0;
    if (!ok) return peft_fail("%s: SentencePiece-style BPE needs all 256 byte-fallback tokens <0x00>..<0xFF> for llama.cpp", t->source);
    const NormStep *n = t->norm;
    bool replace_last = t->n_norm && n[t->n_norm - 1].kind == NORM_REPLACE && !strcmp(n[t->n_norm - 1].from, " ") && !strcmp(n[t->n_norm - 1].to, SPACE_MARK);
    if (t->n_pre == 0 && replace_last && t->n_norm == 1) { *prefix = false; return 0; }
    if (t->n_pre == 0 && replace_last && t->n_norm == 2 && n[0].kind == NORM_PREPEND && !strcmp(n[0].to, SPACE_MARK)) { *prefix = true; return 0; }
    if (t->n_norm == 0 && t->n_pre == 1 && t->pre[0].kind == PRE_METASPACE && !strcmp(t->pre[0].replacement, SPACE_MARK)) {
        *prefix = t->pre[0].prepend != PREPEND_NEVER;
        return 0;
    }
    return peft_fail("%s: its normalizer and pre-tokenizer have no llama.cpp counterpart (\"" SPACE_MARK "\" for spaces, optionally put before the text, is what it has)", t->source);
}

static bool is_added(const Tokenizer *t, int id) {
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return true;
    return false;
}

static int32_t token_type(const Tokenizer *t, int id, bool spm) {
    if (id >= t->n_ids || !t->token_text[id]) return TT_UNUSED;
    if (id == t->unk_id) return TT_UNKNOWN;
    if (is_added(t, id)) return t->special[id] ? TT_CONTROL : TT_USER_DEFINED;
    for (int b = 0; spm && b < 256; b++)
        if (t->fallback_id[b] == id) return TT_BYTE;
    return TT_NORMAL;
}

// Token texts, "[PAD<id>]" for ids the tokenizer does not use up to n_vocab (as llama.cpp's
// converter pads). llama.cpp needs every text non-empty and given once.
static int token_list(const Tokenizer *t, int n_vocab, char ***out) {
    char **texts = xcalloc(n_vocab, sizeof *texts);
    int rc = 0;
    for (int id = 0; id < n_vocab && !rc; id++) {
        const char *s = id < t->n_ids ? t->token_text[id] : NULL;
        texts[id] = s ? xstrdup(s) : xasprintf("[PAD%d]", id);
        int owner = tok_find(t, texts[id], strlen(texts[id]));
        if (!*texts[id]) rc = peft_fail("%s: token %d is empty, which llama.cpp does not allow", t->source, id);
        else if (!s && owner >= 0) rc = peft_fail("%s: id %d is unused, and its placeholder \"%s\" is token %d's text", t->source, id, texts[id], owner);
        else if (s && owner != id) rc = peft_fail("%s: \"%s\" is the text of ids %d and %d; llama.cpp needs each token once", t->source, s, owner, id);
    }
    if (rc) {
        for (int id = 0; id < n_vocab; id++) free(texts[id]);
        free(texts);
        return -1;
    }
    *out = texts;
    return 0;
}

// "left right" per merge, best first.
static int put_merges(const Tokenizer *t, GgufWriter *w) {
    char **merges = xcalloc(t->n_merges ? t->n_merges : 1, sizeof *merges);
    int rc = 0;
    for (int r = 0; r < t->n_merges; r++) {
        const TokMapEntry *e = &t->merges.entries[r];  // inserted in rank order
        int32_t ids[2];
        memcpy(ids, t->merges.keys + e->key_off, sizeof ids);
        const char *a = t->token_text[ids[0]], *b = t->token_text[ids[1]];
        if (strchr(a, ' ') && !rc) rc = peft_fail("%s: merge \"%s\" + \"%s\": a space in a merge's first token cannot be written as llama.cpp reads merges", t->source, a, b);
        merges[r] = xasprintf("%s %s", a, b);
    }
    if (!rc) gguf_put_str_array(w, "tokenizer.ggml.merges", (const char *const *)merges, NULL, (uint64_t)t->n_merges);
    for (int r = 0; r < t->n_merges; r++) free(merges[r]);
    free(merges);
    return rc;
}

int tokenizer_to_gguf(const Tokenizer *t, int n_vocab, GgufWriter *w) {
    if (t->n_ids > n_vocab)
        return peft_fail("%s: the tokenizer has %d ids but the model only %d embeddings", t->source, (int)t->n_ids, n_vocab);
    bool spm = !t->byte_level, prefix = false;
    const char *pre = spm ? "default" : byte_level_pre(t);
    if (!pre || (spm && spm_space_prefix(t, &prefix))) return -1;
    if (!spm && t->byte_fallback) return peft_fail("%s: byte-level BPE with byte fallback has no llama.cpp counterpart", t->source);
    char **texts;
    if (token_list(t, n_vocab, &texts)) return -1;
    int32_t *types = xmalloc(sizeof(int32_t) * n_vocab);
    for (int id = 0; id < n_vocab; id++) types[id] = token_type(t, id, spm);
    gguf_put_cstr(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    gguf_put_cstr(w, "tokenizer.ggml.pre", pre);
    gguf_put_str_array(w, "tokenizer.ggml.tokens", (const char *const *)texts, NULL, (uint64_t)n_vocab);
    int rc = 0;
    if (spm) {
        float *scores = xmalloc(sizeof(float) * n_vocab);
        for (int id = 0; id < n_vocab; id++) scores[id] = types[id] == TT_NORMAL ? -(float)t->n_merges : 0.0f;
        for (int r = t->n_merges - 1; r >= 0; r--) scores[t->merge_result[r]] = -(float)r;
        gguf_put_array(w, "tokenizer.ggml.scores", GGUF_F32, scores, (uint64_t)n_vocab);
        free(scores);
    }
    gguf_put_array(w, "tokenizer.ggml.token_type", GGUF_I32, types, (uint64_t)n_vocab);
    if (!spm) rc = put_merges(t, w);
    if (t->bos >= 0) gguf_put_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)t->bos);
    if (t->eos >= 0) gguf_put_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)t->eos);
    if (t->unk_id >= 0) gguf_put_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)t->unk_id);
    gguf_put_bool(w, "tokenizer.ggml.add_bos_token", tokenizer_add_bos(t));
    gguf_put_bool(w, "tokenizer.ggml.add_eos_token", false);  // encode never appends eos
    if (spm) gguf_put_bool(w, "tokenizer.ggml.add_space_prefix", prefix);
    for (int id = 0; id < n_vocab; id++) free(texts[id]);
    free(texts);
    free(types);
    return rc;
}
