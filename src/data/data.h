// data.h: training and evaluation data, tokenized into sequences of token ids with labels.
//
// Sources (a file, or a folder of files, each read by its extension):
//   *.jsonl  one record per line, *.json a JSON array of records (or JSON Lines), in the formats of
//            data_format.c: text, prompt/completion, messages, ShareGPT, Alpaca (the standard Alpaca
//            prompt, or the model's chat template with --format alpaca-chat);
//   *.csv    a header row naming the columns; rows are prompt/completion pairs (or "text"), or Alpaca
//            records (instruction, input, output);
//   other    plain text: each file is a document; all documents are joined with EOS between them
//            and cut into blocks of seq_len tokens.
// The loss is on the completion (Alpaca's output) and its EOS, or on the assistant turns of chat
// records (their content and end-of-turn token: chat_template_spans), unless train_on_prompt.
// Chat records are rendered with the model's chat template and tokenized as transformers does
// (no BOS added: the template writes its own); other examples start with BOS when the tokenizer says
// so and end with EOS. Examples longer than seq_len are truncated (counted in n_truncated). Errors in
// the data name the file, the line and the field.
//
// The tokenized result is cached next to the source (<source>.<hash>.peft-cache), keyed by the
// source files' sizes and mtimes, the tokenizer files and the options that change tokenization;
// when the source's folder is read-only the cache goes to DataOptions.cache_dir instead.
#pragma once
#include "tokenizer.h"
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_seq;
    long *offset;          // [n_seq + 1]: sequence i is ids[offset[i] .. offset[i+1])
    int32_t *ids;
    int32_t *labels;       // same positions as ids; -100 = no loss (prompt, user turns)
    int32_t *pos;          // packed (dataset_pack): each token's position in its example; NULL otherwise
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

// The record formats (data_format.c describes them); DATA_AUTO tells each record's by its fields.
typedef enum { DATA_AUTO, DATA_TEXT, DATA_PROMPT_COMPLETION, DATA_MESSAGES, DATA_SHAREGPT, DATA_ALPACA, DATA_ALPACA_CHAT } DataFormat;
int data_format_parse(const char *s, DataFormat *out);
const char *data_format_name(DataFormat f);

typedef struct DataOptions {
    int seq_len;                    // longest sequence (required, > 1)
    DataFormat format;              // of JSONL, JSON and CSV records (DATA_AUTO: by their fields)
    bool train_on_prompt;           // loss on every token, not only completions and assistant turns
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

// Packing: ds's sequences (examples) laid whole into sequences of at most seq_len tokens, in order,
// a new one begun when the next example does not fit (first fit in order; no example is cut). Each
// token's position restarts at 0 with its example (pos), and the first token of every example has
// no loss: nothing before it in its example predicts it. Training with the positions and attention
// kept inside each example (Model.positions) gives the loss and gradients of the examples unpacked.
void dataset_pack(const Dataset *ds, int seq_len, Dataset *out);
// The positions of the batch dataset_batch made from a packed ds (T its length); padding counts on
// from the last example's end, as a run of its own.
void dataset_batch_positions(const Dataset *ds, const int *idx, int n, int T, int32_t *pos);

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
// A model's chat template, run by the Jinja interpreter (jinja.h) as transformers runs it: with
// messages, tools, documents (none), add_generation_prompt and the special tokens (bos_token,
// eos_token, ...) as variables.

typedef struct JinjaTemplate JinjaTemplate;
typedef struct {
    char *source;          // where the template came from (for messages)
    JinjaTemplate *tmpl;
    cJSON *vars;           // the special tokens given to the template
    bool is_default;       // the model has none: ChatML
    char *end_of_turn;     // what the template writes after an assistant turn's content ("" when
    size_t eot_len;        // nothing recognisable): generation stops there, training learns it
} ChatTemplate;

// A byte range of a rendered text that the loss applies to (an assistant turn's content and its
// end of turn).
typedef struct { size_t start, end; } ChatSpan;

// The model's template: model_dir/chat_template.jinja, else tokenizer_config.json's "chat_template"
// (a string, or the list of named templates' "default"), else ChatML. Errors name the file.
int chat_template_load(ChatTemplate *ct, const char *model_dir);
// A template from its text; special_tokens: a JSON object of (C) strings (NULL: none).
int chat_template_parse(ChatTemplate *ct, const char *text, size_t len, const char *source, const cJSON *special_tokens);
void chat_template_free(ChatTemplate *ct);
// Render messages (a JSON array of message objects; tools: NULL or a JSON array) whose strings carry
// their lengths (json_parse_bytes or json_bytes_string). *text is malloc'd, *len bytes.
int chat_template_render(const ChatTemplate *ct, const cJSON *messages, const cJSON *tools, bool add_generation_prompt,
                         char **text, size_t *len);
// The spans of text (the rendering of messages and tools) that the loss applies to, one per
// assistant message (one with empty content and no end of turn has none); chat_template.c says how
// they are found. Refuses a template that changes an assistant content beyond trimming it.
int chat_template_spans(const ChatTemplate *ct, const cJSON *messages, const cJSON *tools, const char *text, size_t len, ChatSpan **spans,
                        int *n_spans);
// The token that ends an assistant turn, where generation stops: the end-of-turn text when it is
// one token of tok (<|eot_id|>, <|im_end|>, <end_of_turn>, </s>...), else -1 (the eos alone stops).
int chat_template_stop_id(const ChatTemplate *ct, const Tokenizer *tok);
