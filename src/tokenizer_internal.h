// tokenizer_internal.h: the Tokenizer's parts, shared by the tokenizer's own source files only:
//   tokenizer.c       building a Tokenizer, encode / decode entry points, accessors
//   tokenizer_json.c  reading HF tokenizer.json
//   tokenizer_files.c folders, GPT-2 vocab files, bos / eos from config files, reference cases
//   pretokenize.c     normalizers and pre-tokenizers: text -> words
//   bpe.c             one word -> ids (merges by rank, byte fallback, word cache)
//   tok_text.c        UTF-8 helpers and GPT-2's byte <-> character mapping
//   tok_gguf.c        the vocabulary as GGUF metadata, for llama.cpp
//   wordpiece.c       BERT's WordPiece model, BertNormalizer and BertPreTokenizer
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include "tok_map.h"
#include "tokenizer.h"
#include "util.h"

enum { TOK_MAX_STEPS = 16 };

// The pre-tokenizer regex of GPT-2 (also used by HF's ByteLevel pre-tokenizer with use_regex).
#define TOK_GPT2_PATTERN \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

typedef struct {
    char *text;
    size_t len;
    int32_t id;
    bool lstrip, rstrip; // the token swallows the whitespace on its left / right
} AddedToken;

// A string substitution: normalizer Replace / Prepend, decoder Replace.
typedef enum { NORM_PREPEND, NORM_REPLACE, NORM_BERT } NormKind;  // NORM_BERT: Tokenizer.bert_* (wordpiece.c)
typedef struct {
    NormKind kind;
    char *from; // REPLACE only
    char *to;
} NormStep;

typedef enum { PRE_SPLIT, PRE_BYTE_LEVEL, PRE_METASPACE, PRE_BERT } PreKind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } PrependScheme;
typedef struct {
    PreKind kind;
    pcre2_code *re;        // SPLIT; BYTE_LEVEL when use_regex; else NULL
    char *pattern;         // re's source (a literal string when literal), for describing the tokenizer
    bool literal;
    bool add_prefix_space; // BYTE_LEVEL
    char replacement[8];   // METASPACE: the UTF-8 of the space stand-in, normally "▁"
    PrependScheme prepend; // METASPACE
    bool split;            // METASPACE: cut into words, each starting with the stand-in
} PreStep;

typedef struct WordCache WordCache;

enum { BERT_CONTROL, BERT_PUNCT, BERT_MARK, BERT_CLASSES };  // Unicode classes wordpiece.c tests characters for

struct Tokenizer {
    char *source; // the file it was loaded from, for messages

    // Vocabulary: ids 0..n_ids-1, text in the model's own alphabet ("Ġthe", "▁the").
    int32_t n_ids, cap_ids;
    char **token_text;  // [n_ids], NULL for unused ids
    bool *special;      // [n_ids]
    TokMap vocab;       // text -> id
    AddedToken *added;  // tokens matched verbatim in the input, longest first
    int n_added;
    bool added_first_byte[256];

    // BPE model.
    TokMap merges;          // (int32 left id, int32 right id) -> rank
    int32_t *merge_result;  // [rank] -> id of the merged token
    int n_merges, cap_merges;
    int32_t unk_id;         // -1: characters missing from the vocabulary are dropped
    bool byte_fallback;     // missing characters become their <0xXX> byte tokens
    bool fuse_unk;          // consecutive unknown characters share one unk token
    bool ignore_merges;     // a word found whole in the vocabulary is used as is (Llama-3)
    bool byte_level;        // symbols are bytes, spelled through GPT-2's byte -> char mapping
    int32_t byte_id[256];     // byte_level: id of each byte's character, -1 if absent
    int32_t fallback_id[256]; // id of "<0xXX>", -1 if absent
    int32_t ascii_id[128];    // id of each ASCII character as a token, -1 if absent
    TokMap joined;            // character pairs (uint32 x, uint32 y) adjacent inside some token
    uint8_t ascii_joined[128][16]; // the same for ASCII pairs, as a bit set: joined[x][y / 8] bit y % 8

    // Normalizer and pre-tokenizer pipelines, applied to the text between added tokens.
    NormStep norm[TOK_MAX_STEPS];
    int n_norm;
    PreStep pre[TOK_MAX_STEPS];
    int n_pre;

    // Decoder: each token's bytes are precomputed (piece_*); decode concatenates them.
    bool dec_byte_level, dec_byte_fallback;
    NormStep dec_replace[TOK_MAX_STEPS];
    int n_dec_replace;
    int dec_strip_start;     // leading spaces removed from the decoded text
    char *piece_data;
    size_t *piece_off;       // [n_ids]
    uint32_t *piece_len;     // [n_ids]
    bool *piece_is_byte;     // [n_ids]: a <0xXX> byte-fallback token

    int32_t bos, eos;
    bool add_bos;
    WordCache *cache;

    // WordPiece (wordpiece.c): the model, BertNormalizer's options, the decoder.
    bool wordpiece;
    char wp_prefix[16];     // continuing_subword_prefix, "##"
    int wp_max_chars;       // max_input_chars_per_word
    bool bert_clean_text, bert_chinese, bert_strip_accents, bert_lowercase;
    pcre2_code *bert_re[BERT_CLASSES];
    bool dec_wordpiece, dec_cleanup;
};

// Growable byte buffer, always NUL-terminated once written to.
typedef struct {
    char *data;
    size_t len, cap;
} TokBuf;
void tok_buf_put(TokBuf *b, const void *data, size_t n);
void tok_buf_put_lossy(TokBuf *b, const char *s, size_t n); // invalid UTF-8 -> U+FFFD

// State of one encode call.
typedef struct {
    int32_t id, prev, next; // id -1: merged into its left neighbour
} BpeSymbol;
typedef struct {
    int32_t rank, pos, new_id;
} BpeCandidate;
typedef struct {
    const Tokenizer *tok;
    int32_t *ids;
    size_t n_ids, cap_ids;
    pcre2_match_data *match;
    WordCache *cache;       // the shared cache when this call holds its lock, else NULL
    BpeSymbol *syms;        // scratch for bpe.c
    size_t cap_syms;
    BpeCandidate *heap;
    size_t n_heap, cap_heap;
    TokBuf spelled;         // scratch: a word in the model's alphabet
} Encoder;

// tok_text.c
int tok_utf8_len(const uint8_t *s, size_t n); // >0: valid char length; <0: -(bytes to skip)
bool tok_utf8_valid(const char *s, size_t n);
uint32_t tok_utf8_get(const uint8_t *s, int len);
uint32_t tok_byte_to_char(uint8_t b);
int tok_char_to_byte(uint32_t cp);           // -1 when cp is not in the mapping

// tokenizer.c: building
Tokenizer *tok_new(const char *source);
int tok_add_token(Tokenizer *t, const char *text, size_t len, int32_t id);
int tok_add_added(Tokenizer *t, const char *text, int32_t id, bool special, bool lstrip, bool rstrip);
int tok_add_merge(Tokenizer *t, const char *a, size_t alen, const char *b, size_t blen);
int tok_find(const Tokenizer *t, const char *text, size_t len); // id or -1
// Compiles a pre-tokenizer step's regex (or literal string) into p->re and keeps its source.
int tok_pre_regex(PreStep *p, const char *source, const char *pattern, bool literal);
int tok_finish(Tokenizer *t); // call once everything is loaded
void tok_push_id(Encoder *e, int32_t id);

// tokenizer_json.c
int tok_read_json(Tokenizer *t, const char *path);        // a tokenizer.json
int tok_read_vocab_json(Tokenizer *t, const char *path);  // GPT-2's vocab.json / encoder.json
// bos / eos / add_bos_token from a model's config.json and tokenizer_config.json (either may be NULL).
int tok_read_configs(Tokenizer *t, const char *config_json, const char *tokenizer_config_json);

// pretokenize.c: normalize one stretch of text between added tokens, cut it into words and BPE them.
// at_text_start: the stretch begins the input (Metaspace's prepend_scheme "first").
int tok_encode_stretch(Encoder *e, const char *s, size_t n, bool at_text_start);

// wordpiece.c
int tok_bert_classes(Tokenizer *t);  // compiles bert_re (once)
int tok_bert_normalize(const Tokenizer *t, const char *s, size_t n, TokBuf *out);
int tok_bert_pre_step(Encoder *e, int next_step, const char *s, size_t n, bool at_start,
                      int (*emit)(Encoder *, int, const char *, size_t, bool));
void tok_wordpiece_word(Encoder *e, const char *w, size_t n);
void tok_wordpiece_cleanup(TokBuf *text);

// bpe.c
void tok_build_joined(Tokenizer *t); // call once the vocabulary is complete
void tok_bpe_word(Encoder *e, const char *w, size_t n);
WordCache *tok_cache_new(void);
void tok_cache_free(WordCache *c);
WordCache *tok_cache_acquire(WordCache *c); // NULL when another thread holds it
void tok_cache_release(WordCache *c);
void tok_encoder_free_bpe(Encoder *e);
