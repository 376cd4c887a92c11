// data.c: reading text / JSONL / CSV data into token sequences, the on-disk cache, splits and
// batches. See data.h for the formats and the rules.
#include "data_internal.h"
#include "json_bytes.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { IGNORE = -100 };
#define CACHE_MAGIC "PEFTDS03"
#define CACHE_SUFFIX ".peft-cache"

// ---------------------------------------------------------------------------------------------
// Small helpers

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t seed_mix(uint64_t seed, uint64_t k) {
    uint64_t s = seed + 0x9E3779B97F4A7C15ull * k;
    return splitmix64(&s);
}

void shuffle_indices(int *idx, int n, uint64_t seed) {
    uint64_t s = seed;
    for (int i = 0; i < n; i++) idx[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(splitmix64(&s) % (uint64_t)(i + 1));
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

// FNV-1a, for cache keys (not security: a collision only means a stale cache is missed).
static uint64_t fnv(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
    return h;
}
static uint64_t fnv_str(uint64_t h, const char *s) { return fnv(h, s ? s : "\x01(null)", s ? strlen(s) + 1 : 8); }

static bool has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcasecmp(s + n - k, suffix);
}

// ---------------------------------------------------------------------------------------------
// Source files

typedef struct {
    char *path;
    long long size, mtime_ns;
} SourceFile;

typedef struct {
    int n;
    SourceFile *f;
} SourceList;

static void sources_free(SourceList *s) {
    for (int i = 0; i < s->n; i++) free(s->f[i].path);
    free(s->f);
    memset(s, 0, sizeof *s);
}

static int add_source(SourceList *s, const char *path) {
    struct stat st;
    if (stat(path, &st)) return peft_fail("%s: cannot read (no such file?)", path);
    s->f = xrealloc(s->f, sizeof(SourceFile) * (s->n + 1));
    s->f[s->n++] = (SourceFile){xstrdup(path), (long long)st.st_size, (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec};
    return 0;
}

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// A file, or a folder's visible regular files in name order (our cache files excluded).
static int list_sources(const char *path, SourceList *s) {
    memset(s, 0, sizeof *s);
    if (!dir_exists(path)) return add_source(s, path);
    DIR *d = opendir(path);
    if (!d) return peft_fail("%s: cannot open the folder", path);
    char **names = NULL;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || has_suffix(e->d_name, CACHE_SUFFIX)) continue;
        char *full = path_join(path, e->d_name);
        struct stat st;
        if (!stat(full, &st) && S_ISREG(st.st_mode)) { names = xrealloc(names, sizeof(char *) * (n + 1)); names[n++] = full; }
        else free(full);
    }
    closedir(d);
    qsort(names, n, sizeof(char *), cmp_names);
    int rc = 0;
    for (int i = 0; i < n; i++) { if (!rc) rc = add_source(s, names[i]); free(names[i]); }
    free(names);
    if (!rc && s->n == 0) rc = peft_fail("%s: the folder holds no data files", path);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Building the sequences

typedef struct {
    const Tokenizer *tok;
    const DataOptions *opt;
    const char *model_dir;
    Dataset *ds;
    long cap_tokens;
    int cap_seq;
    // Plain text documents, joined for packing at the end.
    int32_t *stream;
    long n_stream, cap_stream;
    ChatTemplate chat;
    bool chat_loaded;
} Builder;

static void append_ids(int32_t **buf, long *n, long *cap, const int32_t *ids, long k) {
    if (*n + k > *cap) { *cap = 2 * (*n + k) + 1024; *buf = xrealloc(*buf, sizeof(int32_t) * *cap); }
    memcpy(*buf + *n, ids, sizeof(int32_t) * k);
    *n += k;
}

// Room for k more tokens in a pair of id / label arrays of capacity *cap.
static void reserve_pair(int32_t **ids, int32_t **labels, long *cap, long need) {
    if (need <= *cap) return;
    *cap = 2 * need + 1024;
    *ids = xrealloc(*ids, sizeof(int32_t) * *cap);
    *labels = xrealloc(*labels, sizeof(int32_t) * *cap);
}

// Keep one sequence. Only labels at positions >= 1 count (the loss predicts token t from those
// before it), so a sequence with none of those is useless and dropped.
static void add_sequence(Builder *b, const int32_t *ids, const int32_t *labels, int n) {
    Dataset *ds = b->ds;
    long loss = 0;
    for (int i = 1; i < n; i++) loss += labels[i] != IGNORE;
    if (loss == 0) { ds->n_dropped++; return; }
    if (ds->n_seq + 2 > b->cap_seq) { b->cap_seq = 2 * b->cap_seq + 64; ds->offset = xrealloc(ds->offset, sizeof(long) * b->cap_seq); }
    long at = ds->offset[ds->n_seq];
    reserve_pair(&ds->ids, &ds->labels, &b->cap_tokens, at + n);
    memcpy(ds->ids + at, ids, sizeof(int32_t) * n);
    memcpy(ds->labels + at, labels, sizeof(int32_t) * n);
    ds->offset[++ds->n_seq] = at + n;
    if (n > ds->max_len) ds->max_len = n;
    ds->n_loss_tokens += loss;
}

// An example of (ids, labels), cut to seq_len.
static void add_example(Builder *b, const int32_t *ids, const int32_t *labels, int n) {
    b->ds->n_examples++;
    if (n > b->opt->seq_len) { b->ds->n_truncated++; n = b->opt->seq_len; }
    add_sequence(b, ids, labels, n);
}

static int encode(const Builder *b, const char *text, size_t len, int32_t **ids, int *n) {
    return tokenizer_encode(b->tok, text, len, ids, n);
}

// Growable ids + labels of one example.
typedef struct { int32_t *ids, *labels; long n, cap; } Example;

static void ex_put(Example *e, const int32_t *ids, long k, bool loss) {
    if (k == 0) return;  // (e->ids may still be NULL: an empty text as the first part)
    reserve_pair(&e->ids, &e->labels, &e->cap, e->n + k);
    memcpy(e->ids + e->n, ids, sizeof(int32_t) * k);
    for (long i = 0; i < k; i++) e->labels[e->n + i] = loss ? ids[i] : IGNORE;
    e->n += k;
}

static void ex_free(Example *e) { free(e->ids); free(e->labels); }

static void ex_put_special(Example *e, int id, bool loss) {
    if (id < 0) return;
    int32_t v = id;
    ex_put(e, &v, 1, loss);
}

// bos (when the tokenizer adds one) + prompt (no loss unless train_on_prompt) + completion (loss) + eos (loss).
static int add_prompt_completion(Builder *b, const char *prompt, size_t plen, const char *sep, const char *completion, size_t clen) {
    Example e = {0};
    int32_t *ids = NULL;
    int n = 0, rc = 0;
    bool all = b->opt->train_on_prompt;
    if (tokenizer_add_bos(b->tok)) ex_put_special(&e, tokenizer_bos(b->tok), all);
    if (prompt) {
        size_t slen = strlen(sep);
        char *p = xmalloc(plen + slen + 1);
        memcpy(p, prompt, plen);
        memcpy(p + plen, sep, slen + 1);
        rc = encode(b, p, plen + slen, &ids, &n);
        free(p);
        if (!rc) ex_put(&e, ids, n, all);
        free(ids);
    }
    if (!rc) rc = encode(b, completion, clen, &ids, &n);
    if (!rc) { ex_put(&e, ids, n, true); free(ids); }
    ex_put_special(&e, tokenizer_eos(b->tok), true);
    if (!rc) add_example(b, e.ids, e.labels, (int)e.n);
    ex_free(&e);
    return rc;
}

// A plain text document joins the packing stream: bos? + text + eos.
static int add_document(Builder *b, const char *text, size_t len) {
    int32_t *ids = NULL, eos = tokenizer_eos(b->tok), bos = tokenizer_bos(b->tok);
    int n;
    if (encode(b, text, len, &ids, &n)) return -1;
    if (tokenizer_add_bos(b->tok) && bos >= 0) append_ids(&b->stream, &b->n_stream, &b->cap_stream, &bos, 1);
    append_ids(&b->stream, &b->n_stream, &b->cap_stream, ids, n);
    if (eos >= 0) append_ids(&b->stream, &b->n_stream, &b->cap_stream, &eos, 1);
    free(ids);
    b->ds->n_examples++;
    return 0;
}

// Cut the stream into seq_len blocks; a last, shorter block is kept (right-padded in batches).
static void pack_stream(Builder *b) {
    int L = b->opt->seq_len;
    for (long s = 0; s < b->n_stream; s += L) {
        int n = (int)(b->n_stream - s < L ? b->n_stream - s : L);
        add_sequence(b, b->stream + s, b->stream + s, n);
    }
}

// How many of the whole text's tokens (ids[0..n)) the tokens of text[0..at) share: those tokens
// lie before `at`. *exact: all of text[0..at)'s tokens are shared (`at` is a token boundary).
static int shared_tokens(const Builder *b, const char *text, size_t at, const int32_t *ids, int n, bool *exact) {
    int32_t *p;
    int m, k = 0;
    if (encode(b, text, at, &p, &m)) return -1;
    while (k < m && k < n && p[k] == ids[k]) k++;
    *exact = k == m;
    free(p);
    return k;
}

// Render with the chat template; the loss on the assistant spans (chat_template_spans), unless
// train_on_prompt. A span covers the tokens that overlap it: from the first token not wholly before
// its start (a token that joins the turn's leading space to the content's first word trains), to
// the last token that starts before its end.
static int add_chat(Builder *b, const cJSON *messages, const cJSON *tools) {
    if (!b->chat_loaded) {
        if (chat_template_load(&b->chat, b->model_dir)) return -1;
        b->chat_loaded = true;
    }
    char *text;
    size_t len;
    ChatSpan *spans = NULL;
    int n_spans = 0, n_ids = 0;
    if (chat_template_render(&b->chat, messages, tools, false, &text, &len)) return -1;
    int rc = b->opt->train_on_prompt ? 0 : chat_template_spans(&b->chat, messages, tools, text, len, &spans, &n_spans);
    int32_t *ids = NULL;
    if (!rc) rc = encode(b, text, len, &ids, &n_ids);
    Example e = {0};
    if (!rc) ex_put(&e, ids, n_ids, b->opt->train_on_prompt);
    for (int s = 0; !rc && s < n_spans; s++) {
        bool exact;
        int a = shared_tokens(b, text, spans[s].start, ids, n_ids, &exact), z = a < 0 ? -1 : shared_tokens(b, text, spans[s].end, ids, n_ids, &exact);
        if (a < 0 || z < 0) { rc = -1; break; }
        if (!exact && z < n_ids) z++;
        for (int i = a; i < z; i++) e.labels[i] = e.ids[i];
    }
    if (!rc && e.n) add_example(b, e.ids, e.labels, (int)e.n);
    else if (!rc) b->ds->n_examples++, b->ds->n_dropped++;
    ex_free(&e);
    free(ids);
    free(text);
    free(spans);
    return rc ? -1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Formats

// A record (data_format.c) tokenized. The separator goes between a prompt and its completion.
static int add_record(Builder *b, const cJSON *o, const char *where, const char *sep) {
    DataRecord r;
    if (data_record(o, b->opt->format, where, &r)) return -1;
    int rc;
    if (r.messages) {
        if (!b->opt->train_on_prompt)
            for (const cJSON *m = r.messages->child; m; m = m->next)
                if (cJSON_GetObjectItemCaseSensitive(m, "tool_calls")) {
                    data_record_free(&r);
                    return peft_fail("%s: an assistant message with \"tool_calls\": its calls are written by the template in its own syntax, "
                                     "where they cannot be located for the loss; train on such data with --train-on-prompt", where);
                }
        rc = add_chat(b, r.messages, r.tools);
        if (rc) peft_fail_context("%s: ", where);
    } else rc = add_prompt_completion(b, r.prompt, r.prompt_len, r.format == DATA_ALPACA ? "" : sep, r.completion, r.completion_len);
    data_record_free(&r);
    return rc;
}

static int json_record(Builder *b, const char *text, size_t len, const char *path, int line) {
    char where[1100];
    snprintf(where, sizeof where, "%s:%d", path, line);
    cJSON *o = json_parse_bytes(text, len);
    if (!o) return peft_fail("%s: invalid JSON (or a key holding a NUL byte)", where);
    int rc = add_record(b, o, where, b->opt->separator ? b->opt->separator : "");
    cJSON_Delete(o);
    return rc;
}

static bool blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return false;
    return true;
}

static int read_jsonl(Builder *b, const char *path, const char *text, size_t len) {
    int line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        line++;
        if (!blank(text + pos, end - pos) && json_record(b, text + pos, end - pos, path, line)) return -1;
        pos = end + 1;
    }
    return 0;
}

typedef struct { Builder *b; const char *path; } ArrayCtx;
static int array_element(void *ctx, const char *text, size_t len, int line, int index) {
    ArrayCtx *c = ctx;
    (void)index;
    return json_record(c->b, text, len, c->path, line);
}

// A .json file: an array of records, or JSON Lines.
static int read_json(Builder *b, const char *path, const char *text, size_t len) {
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) i++;
    if (i == len || text[i] != '[') return read_jsonl(b, path, text, len);
    ArrayCtx c = {b, path};
    return json_array_each(path, text, len, array_element, &c);
}

static int find_column(const CsvRecord *h, const char *name) {
    for (int i = 0; name && i < h->n; i++) if (!strcmp(h->fields[i], name)) return i;
    return -1;
}

// "a, b, c" for messages.
static char *column_list(const CsvRecord *h) {
    char *s = xstrdup("");
    for (int i = 0; i < h->n; i++) {
        char *t = xasprintf("%s%s\"%s\"", s, i ? ", " : "", h->fields[i]);
        free(s);
        s = t;
    }
    return s;
}

// The prompt / completion (or text) columns: the options name them, else the usual names.
static int csv_columns(const CsvRecord *h, const DataOptions *opt, const char *path, int *pc, int *cc, int *tc) {
    *pc = *cc = *tc = -1;
    const char *named[] = {opt->prompt_column, opt->completion_column, opt->text_column};
    int *out[] = {pc, cc, tc};
    for (int k = 0; k < 3; k++) {
        if (!named[k]) continue;
        if ((*out[k] = find_column(h, named[k])) < 0) {
            char *cols = column_list(h);
            peft_fail("%s:%d: no column \"%s\" (the header has %s)", path, h->line, named[k], cols);
            free(cols);
            return -1;
        }
    }
    if (*pc < 0 && !opt->text_column) *pc = find_column(h, "prompt") >= 0 ? find_column(h, "prompt") : find_column(h, "mr");
    if (*cc < 0) *cc = find_column(h, "completion") >= 0 ? find_column(h, "completion") : find_column(h, "ref");
    if (*cc < 0 && *tc < 0) *tc = find_column(h, "text");
    if ((*pc >= 0 && *cc >= 0) || *tc >= 0) return 0;
    char *cols = column_list(h);
    peft_fail("%s:%d: no prompt/completion columns (looked for prompt/completion, mr/ref, instruction/output, or text; the header has %s): "
              "name the columns to use", path, h->line, cols);
    free(cols);
    return -1;
}

// An Alpaca CSV (instruction and output columns, input and system optional): each row as a record.
static bool alpaca_csv(const CsvRecord *h, const DataOptions *opt) {
    if (opt->format == DATA_ALPACA || opt->format == DATA_ALPACA_CHAT) return true;
    return opt->format == DATA_AUTO && !opt->prompt_column && !opt->completion_column && !opt->text_column &&
           find_column(h, "instruction") >= 0 && find_column(h, "output") >= 0;
}

static int csv_row(Builder *b, const CsvRecord *h, const CsvRecord *row, const char *path, int pc, int cc, int tc, bool alpaca) {
    const char *sep = b->opt->separator ? b->opt->separator : "\n";
    if (!alpaca) {
        if (pc >= 0 && cc >= 0) return add_prompt_completion(b, row->fields[pc], strlen(row->fields[pc]), sep, row->fields[cc], strlen(row->fields[cc]));
        return add_prompt_completion(b, NULL, 0, "", row->fields[tc], strlen(row->fields[tc]));
    }
    static const char *cols[] = {"instruction", "input", "output", "system"};
    cJSON *o = cJSON_CreateObject();
    for (int k = 0; k < 4; k++) {
        int c = find_column(h, cols[k]);
        if (c >= 0) cJSON_AddItemToObject(o, cols[k], json_bytes_string(row->fields[c], strlen(row->fields[c])));
    }
    char where[1100];
    snprintf(where, sizeof where, "%s:%d", path, row->line);
    int rc = add_record(b, o, where, sep);
    cJSON_Delete(o);
    return rc;
}

static int read_csv(Builder *b, const char *path, const char *text, size_t len) {
    CsvReader r;
    CsvRecord h, row;
    csv_reader_init(&r, path, text, len);
    int got = csv_next(&r, &h);
    if (got <= 0) return got < 0 ? -1 : 0;  // an empty file adds nothing (the total may still be empty: an error then)
    bool alpaca = alpaca_csv(&h, b->opt);
    int pc = -1, cc = -1, tc = -1, rc = alpaca ? 0 : csv_columns(&h, b->opt, path, &pc, &cc, &tc);
    if (!rc && !alpaca && b->opt->format != DATA_AUTO && b->opt->format != DATA_TEXT && b->opt->format != DATA_PROMPT_COMPLETION)
        rc = peft_fail("%s: --format %s does not apply to CSV files (their rows are prompt/completion, text or Alpaca records)", path,
                       data_format_name(b->opt->format));
    while (!rc && (got = csv_next(&r, &row)) > 0) {
        if (row.n != h.n) rc = peft_fail("%s:%d: %d fields, but the header has %d", path, row.line, row.n, h.n);
        else rc = csv_row(b, &h, &row, path, pc, cc, tc, alpaca);
        csv_record_free(&row);
    }
    csv_record_free(&h);
    return rc || got < 0 ? -1 : 0;
}

static int read_source(Builder *b, const char *path) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return -1;
    int rc;
    if (has_suffix(path, ".jsonl")) rc = read_jsonl(b, path, text, len);
    else if (has_suffix(path, ".json")) rc = read_json(b, path, text, len);
    else if (has_suffix(path, ".csv")) rc = read_csv(b, path, text, len);
    else rc = len ? add_document(b, text, len) : 0;
    free(text);
    return rc;
}

static int build(Dataset *ds, const SourceList *src, const Tokenizer *tok, const char *model_dir, const DataOptions *opt) {
    Builder b = {.tok = tok, .opt = opt, .model_dir = model_dir, .ds = ds};
    ds->offset = xcalloc(1, sizeof(long));
    b.cap_seq = 1;
    int rc = 0;
    for (int i = 0; !rc && i < src->n; i++) rc = read_source(&b, src->f[i].path);
    if (!rc) pack_stream(&b);
    free(b.stream);
    if (b.chat_loaded) chat_template_free(&b.chat);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The cache: a header, then offsets, ids and labels as raw arrays.

typedef struct {
    char magic[8];
    uint64_t key;
    int32_t n_seq, max_len, pad_id, n_examples, n_truncated, n_dropped;
    int64_t n_tokens, n_loss_tokens;
} CacheHeader;

// Tokenizer files' contents and the options that change tokenization: these name the cache file.
static uint64_t tokenization_key(const char *model_dir, const DataOptions *opt) {
    static const char *files[] = {"tokenizer.json", "vocab.json", "merges.txt", "encoder.json", "vocab.bpe", "tokenizer_config.json",
                                  "special_tokens_map.json", "chat_template.jinja", "config.json", NULL};
    uint64_t h = fnv_str(0xcbf29ce484222325ull, CACHE_MAGIC);
    for (int i = 0; files[i]; i++) {
        char *p = path_join(model_dir, files[i]);
        size_t len = 0;
        char *text = file_exists(p) ? read_file(p, &len) : NULL;
        h = fnv(fnv_str(h, files[i]), text ? text : "", len);
        free(text);
        free(p);
    }
    h = fnv(h, &opt->seq_len, sizeof opt->seq_len);
    int how[] = {(int)opt->format, opt->train_on_prompt};
    h = fnv(h, how, sizeof how);
    const char *strs[] = {opt->prompt_column, opt->completion_column, opt->text_column, opt->separator};
    for (int i = 0; i < 4; i++) h = fnv_str(h, strs[i]);
    return h;
}

// ... and the source files' names, sizes and mtimes tell whether the cache is current.
static uint64_t source_key(uint64_t h, const SourceList *src) {
    for (int i = 0; i < src->n; i++) {
        h = fnv_str(h, src->f[i].path);
        h = fnv(h, &src->f[i].size, sizeof src->f[i].size);
        h = fnv(h, &src->f[i].mtime_ns, sizeof src->f[i].mtime_ns);
    }
    return h;
}

static char *cache_file_name(const char *source, uint64_t tok_key) {
    char *copy = xstrdup(source);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = 0;
    const char *slash = strrchr(copy, '/');
    char *name = xasprintf("%s.%012llx%s", slash ? slash + 1 : copy, (unsigned long long)(tok_key & 0xffffffffffffull), CACHE_SUFFIX);
    free(copy);
    return name;
}

static char *parent_dir(const char *source) {
    char *copy = xstrdup(source);
    size_t n = strlen(copy);
    while (n > 1 && copy[n - 1] == '/') copy[--n] = 0;
    char *slash = strrchr(copy, '/');
    if (!slash) { free(copy); return xstrdup("."); }
    if (slash == copy) slash[1] = 0;
    else *slash = 0;
    return copy;
}

// Writable by its mode bits, not only by access(): root may write anywhere, but a folder marked
// read-only (like a shared data folder) should be left as it is.
static bool dir_writable(const char *dir) {
    struct stat st;
    return !stat(dir, &st) && (st.st_mode & 0222) && access(dir, W_OK) == 0;
}

static int read_cache(Dataset *ds, const char *path, uint64_t key) {
    size_t len;
    if (!file_exists(path)) return -1;
    char *buf = read_file(path, &len);
    if (!buf) return -1;
    CacheHeader h;
    int rc = -1;
    if (len < sizeof h) goto out;
    memcpy(&h, buf, sizeof h);
    if (memcmp(h.magic, CACHE_MAGIC, 8) || h.key != key || h.n_seq < 0 || h.n_tokens < 0) goto out;
    size_t need = sizeof h + sizeof(long) * (h.n_seq + 1) + 2 * sizeof(int32_t) * (size_t)h.n_tokens;
    if (len != need) goto out;
    const char *p = buf + sizeof h;
    ds->n_seq = h.n_seq;
    ds->max_len = h.max_len;
    ds->pad_id = h.pad_id;
    ds->n_examples = h.n_examples;
    ds->n_truncated = h.n_truncated;
    ds->n_dropped = h.n_dropped;
    ds->n_loss_tokens = h.n_loss_tokens;
    ds->offset = xmalloc(sizeof(long) * (h.n_seq + 1));
    ds->ids = xmalloc(sizeof(int32_t) * (h.n_tokens + 1));
    ds->labels = xmalloc(sizeof(int32_t) * (h.n_tokens + 1));
    memcpy(ds->offset, p, sizeof(long) * (h.n_seq + 1));
    p += sizeof(long) * (h.n_seq + 1);
    memcpy(ds->ids, p, sizeof(int32_t) * h.n_tokens);
    memcpy(ds->labels, p + sizeof(int32_t) * h.n_tokens, sizeof(int32_t) * h.n_tokens);
    rc = 0;
out:
    free(buf);
    return rc;
}

static int write_cache(const Dataset *ds, const char *path, uint64_t key) {
    CacheHeader h = {.key = key, .n_seq = ds->n_seq, .max_len = ds->max_len, .pad_id = ds->pad_id,
                     .n_examples = ds->n_examples, .n_truncated = ds->n_truncated, .n_dropped = ds->n_dropped,
                     .n_tokens = ds->offset[ds->n_seq], .n_loss_tokens = ds->n_loss_tokens};
    memcpy(h.magic, CACHE_MAGIC, 8);
    size_t n_off = sizeof(long) * (ds->n_seq + 1), n_ids = sizeof(int32_t) * h.n_tokens;
    char *buf = xmalloc(sizeof h + n_off + 2 * n_ids);
    memcpy(buf, &h, sizeof h);
    memcpy(buf + sizeof h, ds->offset, n_off);
    memcpy(buf + sizeof h + n_off, ds->ids, n_ids);
    memcpy(buf + sizeof h + n_off + n_ids, ds->labels, n_ids);
    int rc = write_file_atomic(path, buf, sizeof h + n_off + 2 * n_ids);
    free(buf);
    return rc;
}

// Where the cache may be: next to the source, then in cache_dir (paths[0..n)).
static int cache_candidates(const char *source, const DataOptions *opt, uint64_t tok_key, char *paths[2]) {
    char *name = cache_file_name(source, tok_key), *parent = parent_dir(source);
    int n = 0;
    paths[n++] = path_join(parent, name);
    if (opt->cache_dir) paths[n++] = path_join(opt->cache_dir, name);
    free(name);
    free(parent);
    return n;
}

static void save_cache(Dataset *ds, const char *source, char *paths[2], int n_paths, const DataOptions *opt, uint64_t key) {
    char *parent = parent_dir(source);
    bool next_to_source = dir_writable(parent);
    free(parent);
    if (next_to_source && !write_cache(ds, paths[0], key)) { ds->cache_path = xstrdup(paths[0]); return; }
    if (n_paths > 1 && !make_dir(opt->cache_dir) && !write_cache(ds, paths[1], key)) { ds->cache_path = xstrdup(paths[1]); return; }
    ds->cache_warning = xasprintf("tokenized data not cached: %s%s", next_to_source ? peft_last_error() : "the data's folder is read-only",
                                  n_paths > 1 ? "" : " and no other cache folder was given");
    peft_clear_error();
}

// ---------------------------------------------------------------------------------------------

void dataset_free(Dataset *ds) {
    free(ds->offset);
    free(ds->ids);
    free(ds->labels);
    free(ds->pos);
    free(ds->cache_path);
    free(ds->cache_warning);
    memset(ds, 0, sizeof *ds);
}

static int check_not_empty(const Dataset *ds, const char *path) {
    if (ds->n_seq > 0) return 0;
    if (ds->n_dropped > 0)
        return peft_fail("%s: no usable examples: all %d were left with nothing to learn after truncation to the sequence length",
                         path, ds->n_dropped);
    return peft_fail("%s: the dataset is empty (no examples)", path);
}

int dataset_load(Dataset *ds, const char *path, const Tokenizer *tok, const char *model_dir, const DataOptions *opt) {
    memset(ds, 0, sizeof *ds);
    if (opt->seq_len < 2) return peft_fail("sequence length must be at least 2 (got %d)", opt->seq_len);
    SourceList src;
    if (list_sources(path, &src)) return -1;
    uint64_t tok_key = tokenization_key(model_dir, opt), key = source_key(tok_key, &src);
    char *paths[2] = {NULL, NULL};
    int n_paths = opt->no_cache ? 0 : cache_candidates(path, opt, tok_key, paths), rc = -1;
    for (int i = 0; i < n_paths; i++)
        if (!read_cache(ds, paths[i], key)) {
            ds->from_cache = true;
            ds->cache_path = xstrdup(paths[i]);
            rc = 0;
            break;
        }
    if (rc) {
        ds->pad_id = tokenizer_eos(tok) >= 0 ? tokenizer_eos(tok) : 0;
        rc = build(ds, &src, tok, model_dir, opt);
        if (!rc) rc = check_not_empty(ds, path);
        if (!rc && n_paths) save_cache(ds, path, paths, n_paths, opt, key);
    }
    if (rc) dataset_free(ds);
    for (int i = 0; i < n_paths; i++) free(paths[i]);
    sources_free(&src);
    return rc;
}

// A dataset made of some of ds's sequences.
static void dataset_subset(const Dataset *ds, const int *idx, int n, Dataset *out) {
    memset(out, 0, sizeof *out);
    long total = 0;
    for (int i = 0; i < n; i++) total += ds->offset[idx[i] + 1] - ds->offset[idx[i]];
    out->offset = xmalloc(sizeof(long) * (n + 1));
    out->ids = xmalloc(sizeof(int32_t) * (total + 1));
    out->labels = xmalloc(sizeof(int32_t) * (total + 1));
    out->pad_id = ds->pad_id;
    out->offset[0] = 0;
    for (int i = 0; i < n; i++) {
        long a = ds->offset[idx[i]], len = ds->offset[idx[i] + 1] - a, o = out->offset[i];
        memcpy(out->ids + o, ds->ids + a, sizeof(int32_t) * len);
        memcpy(out->labels + o, ds->labels + a, sizeof(int32_t) * len);
        out->offset[i + 1] = o + len;
        if (len > out->max_len) out->max_len = (int)len;
        for (long j = 1; j < len; j++) out->n_loss_tokens += ds->labels[a + j] != IGNORE;
    }
    out->n_seq = out->n_examples = n;
}

int dataset_split(const Dataset *ds, double fraction, uint64_t seed, Dataset *train, Dataset *val) {
    if (!(fraction > 0 && fraction < 1)) return peft_fail("the validation fraction must be between 0 and 1 (got %g)", fraction);
    int n = ds->n_seq, n_val = (int)(fraction * n + 0.5);
    if (n_val < 1) n_val = 1;
    if (n_val >= n)
        return peft_fail("a validation fraction of %g of %d sequences leaves none to train on", fraction, n);
    int *idx = xmalloc(sizeof(int) * n);
    shuffle_indices(idx, n, seed ^ 0x5eed5b1170ull);
    dataset_subset(ds, idx, n_val, val);
    dataset_subset(ds, idx + n_val, n - n_val, train);
    free(idx);
    return 0;
}

int dataset_batch(const Dataset *ds, const int *idx, int n, int32_t *ids, int32_t *labels) {
    int T = 0;
    for (int i = 0; i < n; i++) {
        int len = (int)(ds->offset[idx[i] + 1] - ds->offset[idx[i]]);
        if (len > T) T = len;
    }
    for (int i = 0; i < n; i++) {
        long a = ds->offset[idx[i]];
        int len = (int)(ds->offset[idx[i] + 1] - a);
        memcpy(ids + (long)i * T, ds->ids + a, sizeof(int32_t) * len);
        memcpy(labels + (long)i * T, ds->labels + a, sizeof(int32_t) * len);
        for (int t = len; t < T; t++) { ids[(long)i * T + t] = ds->pad_id; labels[(long)i * T + t] = IGNORE; }
    }
    return T;
}

void dataset_pack(const Dataset *ds, int seq_len, Dataset *out) {
    memset(out, 0, sizeof *out);
    long total = ds->offset[ds->n_seq];
    out->offset = xmalloc(sizeof(long) * (ds->n_seq + 1));
    out->ids = xmalloc(sizeof(int32_t) * (total + 1));
    out->labels = xmalloc(sizeof(int32_t) * (total + 1));
    out->pos = xmalloc(sizeof(int32_t) * (total + 1));
    out->pad_id = ds->pad_id;
    out->n_examples = ds->n_examples;
    out->n_truncated = ds->n_truncated;
    out->n_dropped = ds->n_dropped;
    out->offset[0] = 0;
    long end = 0, row = 0;  // the packed tokens so far; where the open sequence starts
    for (int i = 0; i < ds->n_seq; i++) {
        long a = ds->offset[i], len = ds->offset[i + 1] - a;
        if (end > row && end - row + len > seq_len) out->offset[++out->n_seq] = row = end;  // it does not fit: a new sequence
        memcpy(out->ids + end, ds->ids + a, sizeof(int32_t) * len);
        memcpy(out->labels + end, ds->labels + a, sizeof(int32_t) * len);
        out->labels[end] = IGNORE;
        for (long j = 0; j < len; j++) {
            out->pos[end + j] = (int32_t)j;
            out->n_loss_tokens += j > 0 && ds->labels[a + j] != IGNORE;
        }
        end += len;
        if (end - row > out->max_len) out->max_len = (int)(end - row);
    }
    if (end > row) out->offset[++out->n_seq] = end;
}

void dataset_batch_positions(const Dataset *ds, const int *idx, int n, int T, int32_t *pos) {
    for (int i = 0; i < n; i++) {
        long a = ds->offset[idx[i]];
        int len = (int)(ds->offset[idx[i] + 1] - a);
        memcpy(pos + (long)i * T, ds->pos + a, sizeof(int32_t) * len);
        for (int t = len; t < T; t++) pos[(long)i * T + t] = t - len;
    }
}

long count_loss_tokens(const int32_t *labels, int B, int T) {
    long n = 0;
    for (int b = 0; b < B; b++)
        for (int t = 1; t < T; t++) n += labels[(long)b * T + t] != IGNORE;
    return n;
}
