// data.h: training and evaluation data, tokenized into sequences of token ids with labels.
//
// Sources (a file, or a folder of files, each read by its extension):
//   *.jsonl  one example per line: {"text"}, {"prompt", "completion"} (loss only on the completion),
//            or {"messages": [{"role", "content"}, ...]} rendered with the model's chat template
//            (loss only on the assistant turns);
//   *.csv    a header row naming the columns; rows are prompt/completion pairs (or "text");
//   other    plain text: each file is a document; all documents are joined with EOS between them
//            and cut into blocks of seq_len tokens (packing).
// Examples longer than seq_len are truncated (counted in n_truncated). Every example ends with EOS
// (chat examples end with the template's end-of-turn token instead), and starts with BOS when the
// tokenizer says so. Errors in the data name the file and line.
//
// The tokenized result is cached next to the source (<source>.<hash>.peft-cache), keyed by the
// source files' sizes and mtimes, the tokenizer files and the options that change tokenization;
// when the source's folder is read-only the cache goes to DataOptions.cache_dir instead.
#pragma once
#include "tokenizer.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_seq;
    long *offset;          // [n_seq + 1]: sequence i is ids[offset[i] .. offset[i+1])
    int32_t *ids;
    int32_t *labels;       // same positions as ids; -100 = no loss (prompt, user turns)
    int max_len;           // longest sequence
    int pad_id;            // what batches are right-padded with (EOS, or 0)
    long n_loss_tokens;    // labels != -100
    int n_examples;        // records read (text documents count one each)
    int n_truncated;       // examples cut to seq_len
    int n_dropped;         // examples left with no loss token after truncation (not kept)
    bool from_cache;
    char *cache_path;      // the cache read or written (NULL when none)
    char *cache_warning;   // why the cache could not be written (NULL when it was, or was not wanted)
} Dataset;

typedef struct DataOptions {
    int seq_len;                    // longest sequence (required, > 1)
    const char *prompt_column;      // CSV column of the prompt (NULL: "prompt", else "mr")
    const char *completion_column;  // CSV column of the completion (NULL: "completion", else "ref")
    const char *text_column;        // CSV column of plain-text rows (NULL: "text"), used without a prompt column
    const char *separator;          // put between prompt and completion (NULL: "" for JSONL as TRL does,
                                    // "\n" for CSV, whose bare fields need a mark where the completion starts)
    const char *cache_dir;          // cache here when the source's folder is read-only (NULL: no fallback)
    bool no_cache;
} DataOptions;

// Read and tokenize path (a file or a folder). model_dir is where the tokenizer (and, for chat
// data, tokenizer_config.json's chat template) came from; it keys the cache. An empty result
// is an error. Returns 0 or -1 + peft_last_error().
int dataset_load(Dataset *ds, const char *path, const Tokenizer *tok, const char *model_dir, const DataOptions *opt);
void dataset_free(Dataset *ds);

// Split ds into train and validation parts: a seeded shuffle of the sequences, the first
// round(fraction * n) (at least 1) to val. Both parts must be non-empty. ds is left unchanged.
int dataset_split(const Dataset *ds, double fraction, uint64_t seed, Dataset *train, Dataset *val);

// Copy sequences idx[0..n) into ids / labels [n, T], right-padded (pad_id, label -100), where
// T is the longest of them; returns T. The buffers must hold n * ds->max_len values. Right
// padding leaves the causal model's outputs at the real positions unchanged.
int dataset_batch(const Dataset *ds, const int *idx, int n, int32_t *ids, int32_t *labels);

// Positions the causal-LM loss counts in a batch (labels shifted by one, -100 ignored), as
// model_forward's cross-entropy counts them.
long count_loss_tokens(const int32_t *labels, int B, int T);

// idx[i] = i, then a Fisher-Yates shuffle driven by seed (the same seed, the same order).
void shuffle_indices(int *idx, int n, uint64_t seed);
// The k-th seed derived from seed (splitmix64): independent streams for epochs, micro-batches...
uint64_t seed_mix(uint64_t seed, uint64_t k);

// ---- CSV (csv.c): RFC 4180 records: quoted fields may hold commas, newlines and "" ----

typedef struct {
    const char *path;      // for messages
    const char *text;
    size_t len, pos;
    int line;              // 1-based line of the next character
} CsvReader;

typedef struct {
    int n;
    char **fields;
    int line;              // the line the record starts on
} CsvRecord;

void csv_reader_init(CsvReader *r, const char *path, const char *text, size_t len);
// 1 = a record read, 0 = end of input, -1 = malformed (the message names path:line).
int csv_next(CsvReader *r, CsvRecord *rec);
void csv_record_free(CsvRecord *rec);

// ---- chat templates (chat_template.c) ----
// HF chat templates are Jinja programs. We render the common ChatML form
//   <|im_start|>{role}\n{content}<|im_end|>\n   (per message)
// including the "default system message" variant (Qwen2's) and refuse anything else with an
// error that says so, rather than guess at a template we cannot run.

typedef struct {
    char *source;          // where the template came from (for messages)
    char *default_system;  // system message added when the first message is not one (NULL: none)
} ChatTemplate;

typedef struct {
    const char *role;      // "system", "user" or "assistant"
    const char *content;
} ChatMessage;

// A character range of the rendered text that the loss applies to (an assistant turn's
// content and its end-of-turn token).
typedef struct { size_t start, end; } ChatSpan;

// Read tokenizer_config.json's "chat_template" from model_dir. Errors: no template, or one
// that is not ChatML (naming the file).
int chat_template_load(ChatTemplate *ct, const char *model_dir);
void chat_template_free(ChatTemplate *ct);
// Detect and read a template's text (source names it in errors).
int chat_template_parse(ChatTemplate *ct, const char *template_text, const char *source);
// Render messages; *text and *spans are malloc'd. With add_generation_prompt the text ends with
// the start of an assistant turn (for generation). Errors name an unknown role.
int chat_template_render(const ChatTemplate *ct, const ChatMessage *msgs, int n, bool add_generation_prompt,
                         char **text, ChatSpan **spans, int *n_spans);
