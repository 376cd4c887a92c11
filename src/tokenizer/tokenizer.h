// tokenizer.h: byte-pair-encoding tokenizers, producing the same ids as HuggingFace `tokenizers`.
//
// Supported: GPT-2 byte-level BPE (vocab.json + merges.txt, or OpenAI's encoder.json + vocab.bpe),
// and tokenizer.json files with a BPE model in the Llama-2 / TinyLlama / Mistral style (▁ for space,
// byte fallback) or the GPT-2 / Llama-3 / Qwen2 style (regex split + byte-level). Anything else in a
// tokenizer.json is refused with an error naming the file and the field.
//
// A Tokenizer is read-only after loading, so one may be shared by several threads. (It holds a cache
// of encoded words behind a lock; a thread that finds the cache busy encodes without it.)
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer Tokenizer;

// Load from a model folder: tokenizer.json if present, else vocab.json + merges.txt, else
// encoder.json + vocab.bpe. Reads tokenizer_config.json and config.json (when present) for the
// bos / eos tokens and add_bos_token. NULL + peft_last_error() on failure.
Tokenizer *tokenizer_load(const char *dir);
// Whether dir has one of the tokenizer file sets tokenizer_load looks for.
bool tokenizer_files_exist(const char *dir);
// Load one HF tokenizer.json file (no bos / eos from neighbouring config files).
Tokenizer *tokenizer_load_json(const char *path);
// Load GPT-2's vocabulary (token -> id JSON object) and merges ("a b" per line). <|endoftext|> is
// the special token and both bos and eos.
Tokenizer *tokenizer_load_gpt2_files(const char *vocab_json, const char *merges_txt);
void tokenizer_free(Tokenizer *tok);

// Encode len bytes of text. Added / special tokens written in the text (e.g. "<|endoftext|>") become
// their ids. Does not add bos: callers prepend tokenizer_bos() when tokenizer_add_bos() says so.
// Invalid UTF-8 is accepted (its bytes are encoded one by one). *ids is malloc'd (free it), even
// when *n_ids is 0. Returns 0, or -1 with an error.
int tokenizer_encode(const Tokenizer *tok, const char *text, size_t len, int32_t **ids, int *n_ids);

// Decode ids to malloc'd valid UTF-8 (invalid byte sequences become U+FFFD, as HF does) of *len
// bytes, NUL-terminated; the text itself may hold NUL bytes, so read it by *len. Special tokens are
// included as their text; ids outside the vocabulary are skipped.
char *tokenizer_decode(const Tokenizer *tok, const int32_t *ids, int n, size_t *len);

// Streaming decode: the bytes token `id` adds to the text decoded so far. *strip is the number of
// leading spaces the decoder still drops (Llama-style decoders drop the text's first space, across
// tokens when the first are spaces alone): tokenizer_leading_strip before a text's first token, 0 when
// the text does not start with this token; each call updates it. The bytes may be part of a UTF-8
// character (byte-fallback and byte-level tokens), so a streaming caller should hold back an
// incomplete sequence until the next token completes it. Points into the tokenizer; never NULL.
const char *tokenizer_token_bytes(const Tokenizer *tok, int id, int *strip, size_t *len);
int tokenizer_leading_strip(const Tokenizer *tok);

int tokenizer_vocab_size(const Tokenizer *tok);     // largest id + 1, added tokens included
int tokenizer_bos(const Tokenizer *tok);            // -1 when the tokenizer has none
int tokenizer_eos(const Tokenizer *tok);            // -1 when the tokenizer has none
bool tokenizer_add_bos(const Tokenizer *tok);       // whether encoded inputs should start with bos
bool tokenizer_is_special(const Tokenizer *tok, int id);
// The token as the vocabulary spells it (e.g. "Ġthe", "▁the", "<0x0A>"); NULL for an unused id.
const char *tokenizer_token_text(const Tokenizer *tok, int id);
int tokenizer_token_id(const Tokenizer *tok, const char *text); // -1 when not in the vocabulary

// The vocabulary as GGUF metadata (tokenizer.ggml.*) for the llama.cpp tokenizer that encodes as this
// one does, padded to n_vocab ids (tok_gguf.c says which tokenizers have one). -1 + error otherwise.
struct GgufWriter;
int tokenizer_to_gguf(const Tokenizer *tok, int n_vocab, struct GgufWriter *w);

// Check a reference folder like ../shared/fixtures/hf-peft/tokenizer-gpt2: the tokenizer files
// (loaded as tokenizer_load does) and cases.jsonl, one {"text": ..., "ids": [...]} per line. Each
// case must encode to exactly its ids and decode back to its text. Prints nothing. Returns the
// number of failing cases (0 = all pass) and sets *n_cases; the first failure is described in
// first_failure. Returns -1 (message in first_failure and peft_last_error()) when the files cannot
// be read.
int tokenizer_check_cases(const char *dir, int *n_cases, char *first_failure, size_t cap);
