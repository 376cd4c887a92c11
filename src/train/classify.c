// classify.c: sequence classification data, training, evaluation and prediction (classify.h).
#include "classify.h"
#include "cuda/gpu.h"
#include "data.h"
#include "json_bytes.h"
#include "safetensors.h"
#include "train_step.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- data ----

// The class names of config.json's id2label, in index order, NULL after the last (NULL when it has
// none); n = num_labels.
static char **label_names(const char *model_dir, int n) {
    char *path = path_join(model_dir, "config.json"), *text = read_file(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL, *map = j ? cJSON_GetObjectItemCaseSensitive(j, "id2label") : NULL;
    char **names = NULL;
    if (cJSON_IsObject(map)) {
        names = xcalloc(n + 1, sizeof(char *));
        for (int i = 0; i < n; i++) {
            char key[16];
            snprintf(key, sizeof key, "%d", i);
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, key);
            names[i] = xstrdup(cJSON_IsString(v) ? v->valuestring : key);
        }
    }
    cJSON_Delete(j);
    free(text);
    free(path);
    return names;
}

void classify_names_free(char **names) {
    for (int i = 0; names && names[i]; i++) free(names[i]);
    free(names);
}

// The special tokens around the texts: RoBERTa's <s> (bos) and </s> (eos) from config.json, BERT's
// [CLS] and [SEP] from the vocabulary.
static int special_tokens(const Model *m, const Tokenizer *tok, int *cls, int *sep) {
    bool roberta = !strcmp(m->cfg.model_type, "roberta");
    *cls = roberta ? m->cfg.bos_token_id : tokenizer_token_id(tok, "[CLS]");
    *sep = roberta ? m->cfg.eos_token_id : tokenizer_token_id(tok, "[SEP]");
    if (*cls < 0 || *sep < 0 || *cls >= m->cfg.vocab_size || *sep >= m->cfg.vocab_size)
        return peft_fail("%s: no %s token in the vocabulary of %d", m->dir ? m->dir : "the model", *cls < 0 || *cls >= m->cfg.vocab_size ? (roberta ? "<s> (bos_token_id)" : "[CLS]") : (roberta ? "</s> (eos_token_id)" : "[SEP]"), m->cfg.vocab_size);
    return 0;
}

typedef struct {
    ClassifyData *d;
    const Model *m;
    const Tokenizer *tok;
    int cls, sep, seq_len, num_labels;
    bool need_labels;
    char **names;
    const char *where;
} Loader;

// A label as text: an index, a class name, or (regression) a number.
static int parse_label(Loader *L, const char *s, float *out) {
    char *end;
    if (L->num_labels == 1) {
        double v = strtod(s, &end);
        if (end == s || *end || !isfinite((float)v)) return peft_fail("%s: label \"%.40s\" is not a number (the model has one output: regression)", L->where, s);
        *out = (float)v;
        return 0;
    }
    for (int i = 0; L->names && i < L->num_labels; i++)
        if (!strcmp(L->names[i], s)) { *out = (float)i; return 0; }
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 0 || v >= L->num_labels)
        return peft_fail("%s: label \"%.40s\" is neither a class index below num_labels %d nor a class name of config.json's id2label",
                         L->where, s, L->num_labels);
    *out = (float)v;
    return 0;
}

// Appends one example: the texts encoded, truncated longest first, framed by the special tokens.
static int add_example(Loader *L, const char *a, size_t na, const char *b, size_t nb, bool pair, const char *label) {
    ClassifyData *d = L->d;
    int32_t *ta = NULL, *tb = NULL;
    int la = 0, lb = 0;
    if (tokenizer_encode(L->tok, a, na, &ta, &la) || (pair && tokenizer_encode(L->tok, b, nb, &tb, &lb))) {
        free(ta);
        free(tb);
        return peft_fail_context("%s: ", L->where);
    }
    bool roberta = !strcmp(L->m->cfg.model_type, "roberta");
    int extra = pair ? (roberta ? 4 : 3) : 2;
    if (L->seq_len <= extra) { free(ta); free(tb); return peft_fail("%s: sequence length %d leaves no room for text", L->where, L->seq_len); }
    while (la + lb + extra > L->seq_len) {  // longest_first: one token at a time from the longer text
        if (la > lb) la--;
        else lb--;
    }
    int n = la + lb + extra, k = 0;
    int32_t *ids = xmalloc(sizeof(int32_t) * n), *types = xcalloc(n, sizeof(int32_t));
    ids[k++] = L->cls;
    for (int i = 0; i < la; i++) ids[k++] = ta[i];
    ids[k++] = L->sep;
    if (pair) {
        if (roberta) ids[k++] = L->sep;
        for (int i = 0; i < lb; i++) { types[k] = !roberta; ids[k++] = tb[i]; }
        types[k] = !roberta;
        ids[k++] = L->sep;
    }
    free(ta);
    free(tb);
    for (int i = 0; i < n; i++)
        if (ids[i] >= L->m->cfg.vocab_size) {
            free(ids);
            free(types);
            return peft_fail("%s: token id %d is outside the model's vocabulary of %d", L->where, ids[i], L->m->cfg.vocab_size);
        }
    float y = 0;
    if (label && parse_label(L, label, &y)) { free(ids); free(types); return -1; }
    if (!label && L->need_labels) { free(ids); free(types); return peft_fail("%s: no label", L->where); }
    d->ids = xrealloc(d->ids, sizeof(int32_t *) * (d->n + 1));
    d->types = xrealloc(d->types, sizeof(int32_t *) * (d->n + 1));
    d->len = xrealloc(d->len, sizeof(int) * (d->n + 1));
    if (L->need_labels) d->labels = xrealloc(d->labels, sizeof(float) * (d->n + 1));
    d->ids[d->n] = ids;
    d->types[d->n] = types;
    d->len[d->n] = n;
    if (L->need_labels) d->labels[d->n] = y;
    if (n > d->max_len) d->max_len = n;
    d->n++;
    return 0;
}

static int col_index(const CsvRecord *h, const char *name) {
    for (int i = 0; name && i < h->n; i++)
        if (!strcmp(h->fields[i], name)) return i;
    return -1;
}

static int read_csv(Loader *L, const ClassifyColumns *cols, const char *path, const char *text, size_t len) {
    CsvReader r;
    CsvRecord h = {0}, rec = {0};
    csv_reader_init(&r, path, text, len);
    if (csv_next(&r, &h) != 1) { csv_record_free(&h); return peft_fail("%s: no header row", path); }
    int ct = col_index(&h, cols->text ? cols->text : "text"), cp = col_index(&h, cols->text_pair), cl = col_index(&h, cols->label ? cols->label : "label");
    if (ct < 0 && !cols->text) ct = col_index(&h, "sentence");
    int rc = 0;
    if (ct < 0) rc = peft_fail("%s: no text column \"%s\"", path, cols->text ? cols->text : "text");
    else if (cols->text_pair && cp < 0) rc = peft_fail("%s: no text pair column \"%s\"", path, cols->text_pair);
    else if (L->need_labels && cl < 0) rc = peft_fail("%s: no label column \"%s\"", path, cols->label ? cols->label : "label");
    char where[1100];
    int got;
    while (!rc && (got = csv_next(&r, &rec)) == 1) {
        snprintf(where, sizeof where, "%s:%d", path, rec.line);
        L->where = where;
        if (rec.n != h.n) rc = peft_fail("%s: %d fields, the header has %d", where, rec.n, h.n);
        else rc = add_example(L, rec.fields[ct], strlen(rec.fields[ct]), cp >= 0 ? rec.fields[cp] : NULL, cp >= 0 ? strlen(rec.fields[cp]) : 0,
                              cp >= 0, cl >= 0 ? rec.fields[cl] : NULL);
        csv_record_free(&rec);
    }
    if (!rc && got < 0) rc = -1;
    csv_record_free(&h);
    return rc;
}

static int read_jsonl(Loader *L, const ClassifyColumns *cols, const char *path, const char *text, size_t len) {
    const char *tc = cols->text ? cols->text : "text", *lc = cols->label ? cols->label : "label";
    char where[1100];
    int line = 0, rc = 0;
    for (size_t pos = 0; pos < len && !rc;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        line++;
        size_t i = pos;
        while (i < end && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r')) i++;
        if (i < end) {
            snprintf(where, sizeof where, "%s:%d", path, line);
            L->where = where;
            cJSON *o = json_parse_bytes(text + pos, end - pos);
            const cJSON *t = o ? cJSON_GetObjectItemCaseSensitive(o, tc) : NULL, *p = o && cols->text_pair ? cJSON_GetObjectItemCaseSensitive(o, cols->text_pair) : NULL;
            const cJSON *l = o ? cJSON_GetObjectItemCaseSensitive(o, lc) : NULL;
            if (o && !t && !cols->text) t = cJSON_GetObjectItemCaseSensitive(o, "sentence");
            char num[64], *label = NULL;
            if (cJSON_IsNumber(l)) snprintf(label = num, sizeof num, "%.17g", l->valuedouble);
            else if (cJSON_IsString(l)) label = l->valuestring;
            size_t na = 0, nb = 0;
            const char *a = cJSON_IsString(t) ? json_bytes(t, &na) : NULL, *b = cJSON_IsString(p) ? json_bytes(p, &nb) : NULL;
            if (!o) rc = peft_fail("%s: not a JSON object", where);
            else if (!a) rc = peft_fail("%s: no string field \"%s\"", where, tc);
            else if (cols->text_pair && !b) rc = peft_fail("%s: no string field \"%s\"", where, cols->text_pair);
            else if (l && !label) rc = peft_fail("%s: field \"%s\" must be a number or a string", where, lc);
            else rc = add_example(L, a, na, b, nb, cols->text_pair != NULL, label);
            cJSON_Delete(o);
        }
        pos = end + 1;
    }
    return rc;
}

void classify_data_free(ClassifyData *d) {
    for (int i = 0; i < d->n; i++) { free(d->ids[i]); free(d->types[i]); }
    free(d->ids);
    free(d->types);
    free(d->len);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

int classify_data_load(ClassifyData *d, const char *path, const Model *m, const Tokenizer *tok, const ClassifyColumns *cols, int seq_len,
                       bool need_labels) {
    memset(d, 0, sizeof *d);
    if (model_problem_type(&m->cfg, true) == PROBLEM_MULTI_LABEL)
        return peft_fail("%s: problem_type multi_label_classification: multi-label data files are not implemented (single-label and regression are)", m->dir);
    bool roberta = !strcmp(m->cfg.model_type, "roberta");
    int positions = m->cfg.n_positions - (roberta ? m->cfg.pad_token_id + 1 : 0);
    if (seq_len <= 0) seq_len = positions < 512 ? positions : 512;
    if (seq_len > positions) return peft_fail("sequence length %d exceeds the model's %d positions", seq_len, positions);
    Loader L = {.d = d, .m = m, .tok = tok, .seq_len = seq_len, .num_labels = m->cfg.num_labels, .need_labels = need_labels, .where = path};
    if (special_tokens(m, tok, &L.cls, &L.sep)) return -1;
    L.names = label_names(m->dir ? m->dir : ".", m->cfg.num_labels);
    size_t len;
    char *text = read_file(path, &len);
    size_t pl = strlen(path);
    int rc = !text ? -1 : pl > 4 && !strcmp(path + pl - 4, ".csv") ? read_csv(&L, cols, path, text, len)
                        : pl > 6 && !strcmp(path + pl - 6, ".jsonl") ? read_jsonl(&L, cols, path, text, len)
                        : peft_fail("%s: classification data must be a .csv or .jsonl file", path);
    free(text);
    classify_names_free(L.names);
    if (!rc && d->n == 0) rc = peft_fail("%s: no examples", path);
    if (rc) classify_data_free(d);
    return rc;
}

// ---- batches ----

typedef struct {
    int32_t *ids, *mask, *types;
    float *targets;
    ClassifyBatch b;
} Batch;

static void batch_alloc(Batch *bt, int B, int T) {
    bt->ids = xmalloc(sizeof(int32_t) * B * T);
    bt->mask = xmalloc(sizeof(int32_t) * B * T);
    bt->types = xmalloc(sizeof(int32_t) * B * T);
    bt->targets = xmalloc(sizeof(float) * B);
}

static void batch_free(Batch *bt) {
    free(bt->ids);
    free(bt->mask);
    free(bt->types);
    free(bt->targets);
}

// Examples idx[0..B) padded to the longest of them.
static void batch_fill(Batch *bt, const Model *m, const ClassifyData *d, const int *idx, int B) {
    int T = 1;
    for (int b = 0; b < B; b++) if (d->len[idx[b]] > T) T = d->len[idx[b]];
    for (int b = 0; b < B; b++) {
        int e = idx[b], n = d->len[e];
        for (int t = 0; t < T; t++) {
            long i = (long)b * T + t;
            bt->ids[i] = t < n ? d->ids[e][t] : m->cfg.pad_token_id;
            bt->mask[i] = t < n;
            bt->types[i] = t < n ? d->types[e][t] : 0;
        }
        if (d->labels) bt->targets[b] = d->labels[e];
    }
    bool types = m->cfg.type_vocab_size > 1;
    bt->b = (ClassifyBatch){bt->ids, bt->mask, types ? bt->types : NULL, d->labels ? bt->targets : NULL, m->cfg.num_labels > 1, B, T};
}

int classify_predict(Model *m, const ClassifyData *d, int batch, float *out, float *logits) {
    bool training = m->training;
    m->training = false;
    Batch bt;
    batch_alloc(&bt, batch, d->max_len);
    int *idx = xmalloc(sizeof(int) * batch), rc = 0, NL = m->cfg.num_labels;
    for (int s = 0; s < d->n && !rc; s += batch) {
        int B = d->n - s < batch ? d->n - s : batch;
        for (int b = 0; b < B; b++) idx[b] = s + b;
        batch_fill(&bt, m, d, idx, B);
        bt.b.targets = NULL;
        if (isnan(model_classify(m, &bt.b))) { rc = -1; break; }
        for (int b = 0; b < B; b++) {
            const float *z = m->act.logits + (long)b * NL;
            int best = 0;
            for (int j = 1; j < NL; j++) if (z[j] > z[best]) best = j;
            out[s + b] = NL == 1 ? z[0] : (float)best;
            if (logits) memcpy(logits + (long)(s + b) * NL, z, sizeof(float) * NL);
        }
    }
    free(idx);
    batch_free(&bt);
    m->training = training;
    return rc;
}

// ---- metrics ----

static double pearson(const double *x, const double *y, int n) {
    double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
    for (int i = 0; i < n; i++) { mx += x[i]; my += y[i]; }
    mx /= n;
    my /= n;
    for (int i = 0; i < n; i++) {
        sxy += (x[i] - mx) * (y[i] - my);
        sxx += (x[i] - mx) * (x[i] - mx);
        syy += (y[i] - my) * (y[i] - my);
    }
    return sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
}

static const double *rank_key;
static int by_key(const void *a, const void *b) {
    double x = rank_key[*(const int *)a], y = rank_key[*(const int *)b];
    return x < y ? -1 : x > y;
}

// Ranks 1..n, ties sharing their average rank (scipy.stats.rankdata's default).
static void ranks(const double *v, int n, double *r) {
    int *o = xmalloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) o[i] = i;
    rank_key = v;
    qsort(o, n, sizeof *o, by_key);
    for (int i = 0; i < n;) {
        int j = i;
        while (j + 1 < n && v[o[j + 1]] == v[o[i]]) j++;
        for (int k = i; k <= j; k++) r[o[k]] = (i + j) / 2.0 + 1;
        i = j + 1;
    }
    free(o);
}

void classify_metrics(const float *pred, const float *gold, int n, int num_labels, ClassifyMetrics *out) {
    memset(out, 0, sizeof *out);
    out->n = n;
    out->regression = num_labels == 1;
    if (out->regression) {
        double *x = xmalloc(sizeof(double) * n * 4), *y = x + n, *rx = y + n, *ry = rx + n;
        for (int i = 0; i < n; i++) {
            x[i] = pred[i];
            y[i] = gold[i];
            out->mse += (x[i] - y[i]) * (x[i] - y[i]) / n;
        }
        out->pearson = pearson(x, y, n);
        ranks(x, n, rx);
        ranks(y, n, ry);
        out->spearman = pearson(rx, ry, n);
        free(x);
        return;
    }
    int K = num_labels;
    double *cm = xcalloc((size_t)K * K, sizeof(double));  // [gold, pred]
    for (int i = 0; i < n; i++) cm[(int)gold[i] * K + (int)pred[i]]++;
    double correct = 0, f1_sum = 0, *t = xcalloc(K, sizeof(double)), *p = xcalloc(K, sizeof(double));
    for (int k = 0; k < K; k++) {
        correct += cm[k * K + k];
        for (int j = 0; j < K; j++) { t[k] += cm[k * K + j]; p[k] += cm[j * K + k]; }
    }
    for (int k = 0; k < K; k++) f1_sum += t[k] + p[k] > 0 ? 2 * cm[k * K + k] / (t[k] + p[k]) : 0;
    out->accuracy = n ? correct / n : NAN;
    // sklearn: binary F1 of class 1; more classes: the unweighted mean over the classes.
    out->f1 = K == 2 ? (t[1] + p[1] > 0 ? 2 * cm[3] / (t[1] + p[1]) : 0) : f1_sum / K;
    // sklearn's matthews_corrcoef: (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t))
    double tp = 0, pp = 0, tt = 0, s = n;
    for (int k = 0; k < K; k++) { tp += t[k] * p[k]; pp += p[k] * p[k]; tt += t[k] * t[k]; }
    double den = sqrt((s * s - pp) * (s * s - tt));
    out->mcc = den > 0 ? (correct * s - tp) / den : 0;
    free(cm);
    free(t);
    free(p);
}

// ---- training ----

typedef struct {
    Model *m;
    const ClassifyData *d;
    int *perm, batch, per_epoch, perm_epoch;
    uint64_t seed;
    int step, accum;
    Batch bt;
} Feeder;

static void shuffle(int *perm, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) perm[i] = i;
    uint64_t s = seed;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(seed_mix(s, (uint64_t)i) % (uint64_t)(i + 1));
        int x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
}

// Micro-batch k of the current step: the epoch's shuffle from (seed, epoch), as train.c's.
static int next_batch(void *user, int k, MicroBatch *mb) {
    Feeder *f = user;
    long micro = (long)f->step * f->accum + k;
    int epoch = (int)(micro / f->per_epoch), at = (int)(micro % f->per_epoch) * f->batch;
    if (epoch != f->perm_epoch) shuffle(f->perm, f->d->n, seed_mix(f->seed, (uint64_t)epoch));
    f->perm_epoch = epoch;
    int B = f->d->n - at < f->batch ? f->d->n - at : f->batch;
    batch_fill(&f->bt, f->m, f->d, f->perm + at, B);
    *mb = (MicroBatch){.ids = f->bt.ids, .B = B, .T = f->bt.b.T, .dropout_seed = seed_mix(f->seed, (uint64_t)micro), .tokens = 0,
                       .classify = &f->bt.b};
    for (int i = 0; i < B * f->bt.b.T; i++) mb->tokens += f->bt.mask[i];
    return 0;
}

static int refuse_options(const TrainConfig *c) {
    const char *what = c->pack ? "--pack" : c->quantize ? "--quantize"
                     : c->resume ? "--resume" : c->save_every ? "--save-every" : c->val_fraction > 0 ? "--val-fraction"
                     : c->eval_every ? "--eval-every" : c->head_only && c->cuda ? "--head-only with --device cuda" : NULL;
    if (c->head_only && c->method != METHOD_FULL)
        return peft_fail("--head-only trains the full model's head alone, not an adapter: it takes --method full (got %s)", method_name(c->method));
    return what ? peft_fail("--task classify: %s is not implemented", what) : 0;
}

static int attach(Model *m, const TrainConfig *c, int total_steps) {
    if (c->method == METHOD_FULL) {
        for (int i = 0; i < m->n_params; i++) {  // model_train_all, with HF Trainer's decay groups
            Param *p = &m->params[i];
            // Linear probing: PEFT's SEQ_CLS head (modules_to_save "classifier": RoBERTa's dense and
            // out_proj, BERT's classifier) trains, the rest stays the base's.
            if (c->head_only && strncmp(p->name, "classifier.", 11)) continue;
            p->trainable = true;
            p->decay = p->ndim == 2;
            if (!p->grad) p->grad = xcalloc(p->numel, sizeof(float));
        }
        return 0;
    }
    AdapterConfig a = c->adapter;  // shares the caller's allocations; what is added here is freed here
    bool own_targets = a.n_targets == 0 && !a.target_regex;
    if (own_targets) adapter_config_default_targets(&a, &m->cfg);
    a.type = c->method;
    a.fan_in_fan_out = false;
    snprintf(a.task_type, sizeof a.task_type, "SEQ_CLS");
    a.n_modules_to_save = 0;
    a.modules_to_save = NULL;
    for (int i = 0; i < c->adapter.n_modules_to_save; i++) adapter_config_add_module_to_save(&a, c->adapter.modules_to_save[i]);
    adapter_config_add_module_to_save(&a, "classifier");  // PeftModelForSequenceClassification's
    adapter_config_add_module_to_save(&a, "score");
    if (a.type == METHOD_VERA) a.save_projection = false;
    if (a.type == METHOD_ADALORA) {
        a.r = a.init_r;
        if (a.total_step == 0) a.total_step = total_steps;
    }
    int rc = adapters_attach(m, &a, c->seed);
    for (int i = 0; i < a.n_modules_to_save; i++) free(a.modules_to_save[i]);
    free(a.modules_to_save);
    if (own_targets) {
        for (int i = 0; i < a.n_targets; i++) free(a.targets[i]);
        free(a.targets);
    }
    if (rc) return -1;
    free(m->adapters->cfg.base_model);
    m->adapters->cfg.base_model = xstrdup(c->model_dir);
    return 0;
}

static void report(const TrainCallbacks *cb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(const TrainCallbacks *cb, const char *fmt, ...) {
    if (!cb || !cb->on_message) return;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cb->on_message(cb->user, text);
}

static void describe_metrics(const TrainCallbacks *cb, const char *what, const ClassifyMetrics *s) {
    if (s->regression) report(cb, "%s: pearson %.4f  spearman %.4f  mse %.4g (%d examples)", what, s->pearson, s->spearman, s->mse, s->n);
    else report(cb, "%s: accuracy %.4f  f1 %.4f  mcc %.4f (%d examples)", what, s->accuracy, s->f1, s->mcc, s->n);
}

static int evaluate(Model *m, const ClassifyData *d, int batch, ClassifyMetrics *out) {
    float *pred = xmalloc(sizeof(float) * d->n);
    int rc = classify_predict(m, d, batch, pred, NULL);
    if (!rc) classify_metrics(pred, d->labels, d->n, m->cfg.num_labels, out);
    free(pred);
    return rc;
}

int classify_train(const TrainConfig *cfg, const ClassifyColumns *cols, const TrainCallbacks *cb, TrainResult *res) {
    *res = (TrainResult){.last_loss = NAN, .first_val_loss = NAN, .last_val_loss = NAN};
    if (refuse_options(cfg)) return -1;
    TrainConfig c = *cfg;
    if (c.batch <= 0 || c.grad_accum <= 0 || c.epochs <= 0) return peft_fail("--batch, --grad-accum and --epochs must be positive");
    if (c.threads > 0) omp_set_num_threads(c.threads);
    const char *outputs[] = {"adapter_model.safetensors", "model.safetensors", "train_log.jsonl"};
    for (size_t i = 0; !c.overwrite && i < sizeof outputs / sizeof *outputs; i++) {
        char *p = path_join(c.out_dir, outputs[i]);
        bool there = file_exists(p);
        free(p);
        if (there) return peft_fail("%s holds another run's %s: pass --overwrite to replace it", c.out_dir, outputs[i]);
    }
    Model *m = model_load(c.model_dir);
    Tokenizer *tok = m ? tokenizer_load(c.model_dir) : NULL;
    ClassifyData train = {0}, val = {0};
    TrainStep st = {0};
    GpuModel *g = NULL;  // --device cuda: the step's model (the host's trainables are refreshed from it before evaluating and saving)
    Feeder f = {0};
    FILE *log = NULL;
    char *log_path = NULL, *log_tmp = NULL;
    int rc = tok ? 0 : -1;
    if (!rc && m->cfg.arch != ARCH_BERT) rc = peft_fail("%s: --task classify needs an encoder (BERT, RoBERTa), not %s", c.model_dir, m->cfg.model_type);
    if (!rc && m->cfg.dropout > 0 && !c.no_base_dropout)
        rc = peft_fail("%s/config.json: %s %g: the base model's dropout is not implemented, so training would not be what "
                       "transformers does; pass --no-base-dropout to train without it", c.model_dir, m->cfg.dropout_key, m->cfg.dropout);
    if (!rc) rc = classify_data_load(&train, c.data_path, m, tok, cols, c.data.seq_len, true);
    if (!rc && c.val_path) rc = classify_data_load(&val, c.val_path, m, tok, cols, c.data.seq_len, true);
    if (rc) goto out;
    report(cb, "data: %d training examples (longest %d tokens)%s", train.n, train.max_len, c.val_path ? "" : ", no validation data");
    f = (Feeder){.m = m, .d = &train, .batch = c.batch, .per_epoch = (train.n + c.batch - 1) / c.batch, .seed = c.seed, .accum = c.grad_accum,
               .perm_epoch = -1};
    long total = c.max_steps > 0 ? c.max_steps : ((long)c.epochs * f.per_epoch + c.grad_accum - 1) / c.grad_accum;
    if (total > 1000000000L) { rc = peft_fail("too many steps (%ld)", total); goto out; }
    res->total_steps = (int)total;
    if (c.lr == 0) c.lr = train_default_lr(c.method);
    if ((rc = attach(m, &c, res->total_steps)) || (rc = make_dir(c.out_dir))) goto out;
    report(cb, "%s on %s: %ld trainable parameters of %ld", method_get(c.method)->title, m->cfg.model_type, model_count_params(m, true),
           model_count_params(m, false));
    f.perm = xmalloc(sizeof(int) * train.n);
    batch_alloc(&f.bt, c.batch, train.max_len);
    if (c.cuda) {
        GpuOptions opt = {.precision = c.fp32 ? GPU_FP32 : GPU_BF16, .recompute = c.recompute};
        if (!(g = gpu_model_create(m, &opt))) { rc = -1; goto out; }
        char dev[256];
        gpu_describe(dev, sizeof dev);
        report(cb, "device: %s (%s)", dev, c.fp32 ? "fp32" : "bf16 compute, fp32 master weights");
    }
    train_step_init(&st, m, g, c.beta1, c.beta2, c.eps, c.weight_decay, c.max_grad_norm, c.adalora_allocate);
    log_path = path_join(c.out_dir, "train_log.jsonl");
    log_tmp = xasprintf("%s.partial", log_path);
    if (!(log = fopen(log_tmp, "w"))) { rc = peft_fail("%s: cannot write", log_tmp); goto out; }
    if (val.n) {
        ClassifyMetrics s;
        if ((rc = evaluate(m, &val, c.batch, &s))) goto out;
        describe_metrics(cb, "validation before training", &s);
    }
    if (cb && cb->on_start) cb->on_start(cb->user, 0, res->total_steps);
    double t0 = now_seconds();
    long tokens = 0;
    for (int step = 0; step < res->total_steps; step++) {
        StepResult sr;
        double lr = train_lr_at(&c, step, res->total_steps);
        f.step = step;
        if ((rc = train_step_run(&st, step, c.grad_accum, lr, next_batch, &f, &sr))) goto out;
        double elapsed = now_seconds() - t0;
        tokens += sr.tokens;
        TrainStepInfo info = {.step = step + 1, .total_steps = res->total_steps, .epoch = (double)(step + 1) * c.grad_accum / f.per_epoch,
                              .loss = sr.loss, .lm_loss = sr.lm_loss, .lr = lr, .grad_norm = sr.grad_norm, .tokens = sr.tokens,
                              .tokens_per_s = tokens / fmax(elapsed, 1e-9), .elapsed_s = elapsed, .budget = sr.budget};
        fprintf(log, "{\"step\": %d, \"loss\": %.6f, \"cls_loss\": %.6f, \"lr\": %.6g, \"grad_norm\": %.6g}\n", step + 1, sr.loss, sr.lm_loss, lr,
                sr.grad_norm);
        if (cb && cb->on_step) cb->on_step(cb->user, &info);
        res->steps_done = step + 1;
        res->last_loss = sr.loss;
    }
    if (g && (rc = gpu_download_trainables(g, false))) goto out;
    gpu_model_free(g);
    g = NULL;
    if (val.n) {
        ClassifyMetrics s;
        if ((rc = evaluate(m, &val, c.batch, &s))) goto out;
        describe_metrics(cb, "validation after training", &s);
        res->n_val = val.n;
    }
    res->n_train = train.n;
    // Saving holds the file twice (the writer's copies, then the file's bytes): the optimizer state and
    // the activations go first, so that saving a fully fine-tuned model does not set the run's peak.
    train_step_free(&st);
    activations_free(&m->act, m->cfg.n_layer);
    rc = c.method == METHOD_FULL ? model_save(m, c.out_dir) : adapters_save(m, c.out_dir);
    if (fclose(log)) rc = rc ? rc : peft_fail("%s: write failed", log_tmp);
    log = NULL;
    if (!rc && rename(log_tmp, log_path)) rc = peft_fail("%s: cannot rename to %s", log_tmp, log_path);
out:
    if (log) fclose(log);
    if (log_tmp && rc) remove(log_tmp);
    free(log_path);
    free(log_tmp);
    train_step_free(&st);
    gpu_model_free(g);
    if (f.perm) { free(f.perm); batch_free(&f.bt); }
    classify_data_free(&train);
    classify_data_free(&val);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}

// The examples as one padded batch (input_ids, attention_mask, token_type_ids when the model has token
// types; int64 [n, max_len], padded as batch_fill pads) and their logits (float32 [n, num_labels]).
static int write_logits(const char *path, const Model *m, const ClassifyData *d, const float *logits) {
    int T = d->max_len > 0 ? d->max_len : 1, NL = m->cfg.num_labels;
    long nt = (long)d->n * T;
    int64_t *ids = xmalloc(sizeof(int64_t) * (nt ? nt : 1)), *mask = xmalloc(sizeof(int64_t) * (nt ? nt : 1)),
            *types = xmalloc(sizeof(int64_t) * (nt ? nt : 1));
    for (int e = 0; e < d->n; e++)
        for (int t = 0; t < T; t++) {
            long i = (long)e * T + t;
            bool in = t < d->len[e];
            ids[i] = in ? d->ids[e][t] : m->cfg.pad_token_id;
            mask[i] = in;
            types[i] = in ? d->types[e][t] : 0;
        }
    StWriter *w = st_writer_new();
    int64_t shape[2] = {d->n, T}, shape_logits[2] = {d->n, NL};
    st_writer_add(w, "input_ids", DT_I64, 2, shape, ids);
    st_writer_add(w, "attention_mask", DT_I64, 2, shape, mask);
    if (m->cfg.type_vocab_size > 1) st_writer_add(w, "token_type_ids", DT_I64, 2, shape, types);
    st_writer_add_f32(w, "logits", 2, shape_logits, logits);
    int rc = st_writer_save(w, path);
    st_writer_free(w);
    free(ids);
    free(mask);
    free(types);
    return rc;
}

int classify_run(const char *model_dir, const char *adapter_dir, const char *data_path, const ClassifyColumns *cols, int seq_len, int batch,
                 bool need_labels, ClassifyMetrics *metrics, float **preds, int *n, char ***names, const char *logits_path) {
    Model *m = model_load(model_dir);
    Tokenizer *tok = m ? tokenizer_load(model_dir) : NULL;
    ClassifyData d = {0};
    int rc = tok ? 0 : -1;
    if (!rc && m->cfg.arch != ARCH_BERT) rc = peft_fail("%s: classification needs an encoder (BERT, RoBERTa), not %s", model_dir, m->cfg.model_type);
    if (!rc && adapter_dir) rc = adapters_load(m, adapter_dir);
    if (!rc) rc = classify_data_load(&d, data_path, m, tok, cols, seq_len, need_labels);
    float *pred = NULL, *logits = NULL;
    if (!rc) {
        pred = xmalloc(sizeof(float) * d.n);
        logits = logits_path ? xmalloc(sizeof(float) * ((long)d.n * m->cfg.num_labels + 1)) : NULL;
        rc = classify_predict(m, &d, batch > 0 ? batch : 8, pred, logits);
        if (!rc && logits_path) rc = write_logits(logits_path, m, &d, logits);
        free(logits);
    }
    if (!rc && need_labels && metrics) classify_metrics(pred, d.labels, d.n, m->cfg.num_labels, metrics);
    if (!rc && names) *names = m->cfg.num_labels > 1 ? label_names(model_dir, m->cfg.num_labels) : NULL;
    if (!rc) *n = d.n;
    if (!rc && preds) *preds = pred;
    else free(pred);
    classify_data_free(&d);
    tokenizer_free(tok);
    model_free(m);
    return rc;
}
