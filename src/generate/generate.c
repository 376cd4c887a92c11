// generate.c: the generation loop. All prompts of a call run as one batch over one KV cache:
// a prefill of every prompt in one kv_forward, then one token per running sequence per step.
// Sampling (greedy included) uses one slot per prompt; beam search num_beams slots per prompt,
// with beams moved between slots by copying a cache row only when a parent has several
// children. Text is built from the tokens' bytes as they come; stop strings and incomplete
// UTF-8 are held back so that streamed pieces are final.
#include "gen_text.h"
#include "generate.h"
#include "util.h"
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void gen_result_free(GenResult *r) {
    if (!r) return;
    free(r->ids);
    free(r->text);
    memset(r, 0, sizeof *r);
}

// ---- text (gen_text.c), handed to the stream piece by piece ----

static void stream_piece(const GenText *t, size_t from, GenStreamFn stream, void *user, int index) {
    if (stream && t->out_len > from) stream(user, index, t->out + from, t->out_len - from);
}

// Adds a token's bytes. Returns true when the text now holds a stop string (cut before it).
static bool text_push(GenText *t, const char *bytes, size_t n, const GenParams *p, GenStreamFn stream, void *user, int index) {
    size_t from;
    bool stop = gen_text_push(t, bytes, n, p, &from);
    if (!stop) stream_piece(t, from, stream, user, index);
    return stop;
}

static void text_finish(GenText *t, GenResult *r, GenStreamFn stream, void *user, int index) {
    stream_piece(t, gen_text_finish(t), stream, user, index);
    if (stream) stream(user, index, NULL, 0);
    r->text = t->out ? t->out : xstrdup("");
    r->text_len = t->out_len;
    t->out = NULL;
    free(t->buf);
    t->buf = NULL;
}

// ---- per-prompt state ----

typedef struct {
    int32_t *toks;        // generated tokens
    int n;
    double score;         // running: sum of log-probs; finished: length-normalised
    int slot;
    GenFinish finish;
} Beam;

typedef struct {
    const int32_t *prompt;
    int plen, max_gen;    // this prompt's token budget (GPT-2: n_positions - plen at most)
    bool done, at_start;  // at_start: the prompt is only bos, so the text starts with our first token
    int strip;            // tokenizer_token_bytes' state for the sampled text
    // sampling
    GenRng rng;
    int32_t *hist;        // prompt + generated tokens (repetition penalty)
    int n_hist;
    GenText text;
    // beam search
    int k;                // running beams (1 before the first step)
    Beam *beams, *next;   // [num_beams]
    Beam *fin;            // finished hypotheses, best num_beams kept
    int n_fin;
} Group;

static const char *tok_bytes(const Tokenizer *tok, int id, int *strip, size_t *n) {
    return tok ? tokenizer_token_bytes(tok, id, strip, n) : (*n = 0, "");
}

// tokenizer_token_bytes' state before token i of a hypothesis (its leading spaces still dropped).
static int strip_before(const Tokenizer *tok, const Group *g, const int32_t *toks, int i) {
    int strip = g->at_start && tok ? tokenizer_leading_strip(tok) : 0;
    size_t k;
    for (int j = 0; j < i && strip > 0; j++) tokenizer_token_bytes(tok, toks[j], &strip, &k);
    return strip;
}

// Would appending `id` to these tokens complete a stop string? Looks at the new token's bytes
// plus enough of the end of the text before it.
static bool completes_stop(const Tokenizer *tok, const GenParams *p, const Group *g, const int32_t *toks, int n, int id) {
    if (!p->n_stop || !tok) return false;
    size_t longest = 0;
    for (int s = 0; s < p->n_stop; s++) if (strlen(p->stop[s]) > longest) longest = strlen(p->stop[s]);
    int first = n;
    size_t tail = 0;
    while (first > 0 && tail + 1 < longest) {
        size_t k;
        int strip = strip_before(tok, g, toks, first - 1);
        tok_bytes(tok, toks[first - 1], &strip, &k);
        tail += k;
        first--;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0, k;
    int strip = strip_before(tok, g, toks, first);
    for (int i = first; i < n; i++) {
        const char *b = tok_bytes(tok, toks[i], &strip, &k);
        bytes_append(&buf, &len, &cap, b, k);
    }
    size_t before = len;
    const char *b = tok_bytes(tok, id, &strip, &k);
    bytes_append(&buf, &len, &cap, b, k);
    bool hit = k > 0 && gen_find_stop(buf, len, before, p) >= 0;
    free(buf);
    return hit;
}

// The text of a finished hypothesis, cut before its first stop string.
static void beam_text(const Tokenizer *tok, const GenParams *p, const Group *g, const Beam *b, GenResult *r,
                      GenStreamFn stream, void *user, int index) {
    GenText t = {0};
    int strip = strip_before(tok, g, b->toks, 0);
    for (int i = 0; i < b->n; i++) {
        size_t k;
        const char *s = tok_bytes(tok, b->toks[i], &strip, &k);
        bytes_append(&t.buf, &t.len, &t.cap, s, k);
    }
    if (!t.buf) bytes_append(&t.buf, &t.len, &t.cap, "", 0);
    long at = gen_find_stop(t.buf, t.len, 0, p);
    if (at >= 0) t.len = (size_t)at;
    text_finish(&t, r, stream, user, index);
}

// Keeps the best num_beams finished hypotheses.
static void add_finished(Group *g, int nb, const Beam *parent, int id, bool keep_id, double sum_logprobs, float length_penalty,
                         GenFinish finish) {
    int len = parent->n + 1;  // generated length, counting the final token (HF)
    double score = sum_logprobs / pow((double)len, length_penalty);
    Beam *h;
    if (g->n_fin < nb) h = &g->fin[g->n_fin++];
    else {
        h = &g->fin[0];
        for (int i = 1; i < nb; i++) if (g->fin[i].score < h->score) h = &g->fin[i];
        if (score <= h->score) return;
    }
    memcpy(h->toks, parent->toks, sizeof(int32_t) * parent->n);
    h->n = parent->n;
    if (keep_id) h->toks[h->n++] = id;
    h->score = score;
    h->finish = finish;
}

static bool is_eos(const GenParams *p, int eos, int id) {
    if (id == eos) return true;
    for (int i = 0; i < p->n_extra_eos; i++) if (p->extra_eos[i] == id) return true;
    return false;
}

typedef struct { double score; int beam, id; } Cand;

// Inserts into a descending top list of size at most cap (ties: earlier flat index first).
static void top_insert(Cand *top, int *n, int cap, Cand c) {
    if (*n == cap && c.score <= top[*n - 1].score) return;
    int i = *n < cap ? (*n)++ : cap - 1;
    while (i > 0 && top[i - 1].score < c.score) { top[i] = top[i - 1]; i--; }
    top[i] = c;
}

// HF keeps max(2, 1 + number of eos tokens) * num_beams candidates per prompt and step.
static int beam_candidates_kept(const GenParams *p, int eos) {
    int n_eos = (eos >= 0) + p->n_extra_eos;
    return (n_eos + 1 > 2 ? n_eos + 1 : 2) * p->num_beams;
}

// The per-row half of a beam-search step, for every row of the step at once (in parallel: a
// vocabulary-wide log-softmax per row is most of a step's host time): the row's log-probs (HF applies
// the repetition penalty to them), then its best row_cap continuations (score = beam score + log-prob)
// into cands [n_rows, row_cap], in token order. row_cap = min(kept, V): a prompt's best kept over all
// its beams are among these, so beam_step picks from them what a scan over every (beam, token) would.
// seen: [threads, V] zeros.
static void beam_rows(const Group *gs, const int *row_group, const int *row_beam, int n_rows, float *logits, int V, const GenParams *p,
                      int row_cap, Cand *cands, int *n_cands, uint8_t *seen) {
    #pragma omp parallel for schedule(dynamic)
    for (int r = 0; r < n_rows; r++) {
        const Group *g = &gs[row_group[r]];
        const Beam *beam = &g->beams[row_beam[r]];
        float *row = logits + (long)r * V;
        gen_log_softmax(row, V);
        gen_repetition_penalty(row, V, p->repetition_penalty, g->prompt, g->plen, beam->toks, beam->n,
                               seen + (size_t)omp_get_thread_num() * V);
        Cand *top = cands + (long)r * row_cap;
        int ntop = 0;
        for (int t = 0; t < V; t++) {
            double s = beam->score + row[t];
            if (ntop == row_cap && s <= top[ntop - 1].score) continue;
            top_insert(top, &ntop, row_cap, (Cand){s, row_beam[r], t});
        }
        for (int i = 1; i < ntop; i++)  // into token order
            for (int j = i; j > 0 && top[j - 1].id > top[j].id; j--) { Cand x = top[j]; top[j] = top[j - 1]; top[j - 1] = x; }
        n_cands[r] = ntop;
    }
}

// One beam-search step of one prompt: its best kept candidates (top: room for kept) from its rows'
// (beam_rows; cands [.., row_cap] and n_cands start at its first row). Returns the new beams'
// slots/tokens in g->beams; sets g->done.
static void beam_step(Group *g, const Cand *cands, const int *n_cands, int row_cap, int kept, const GenParams *p, int eos,
                      const Tokenizer *tok, KVCache *kv, int slot0, Cand *top, bool *claimed, int *free_slots) {
    int nb = p->num_beams, K2 = g->k * row_cap < kept ? g->k * row_cap : kept;
    int ntop = 0;
    for (int b = 0; b < g->k; b++)  // in (beam, token) order: ties go to the earlier, as in a full scan
        for (int i = 0; i < n_cands[b]; i++) {
            Cand c = cands[(long)b * row_cap + i];
            if (ntop == K2 && c.score <= top[ntop - 1].score) continue;
            top_insert(top, &ntop, K2, c);
        }
    bool last = g->beams[0].n + 1 >= g->max_gen;  // every candidate ends here (HF: max length)
    int n_next = 0;
    for (int r = 0; r < ntop && n_next < nb; r++) {
        Cand c = top[r];
        Beam *parent = &g->beams[c.beam];
        bool eos_hit = is_eos(p, eos, c.id);
        bool is_stop = !eos_hit && completes_stop(tok, p, g, parent->toks, parent->n, c.id);
        if (eos_hit || is_stop || last) {
            if (r < nb)
                add_finished(g, nb, parent, c.id, !eos_hit, c.score, p->length_penalty,
                             eos_hit ? GEN_FINISH_EOS : is_stop ? GEN_FINISH_STOP : GEN_FINISH_LENGTH);
            continue;
        }
        Beam *nbm = &g->next[n_next++];
        memcpy(nbm->toks, parent->toks, sizeof(int32_t) * parent->n);
        nbm->n = parent->n;
        nbm->toks[nbm->n++] = c.id;
        nbm->score = c.score;
        nbm->slot = c.beam;  // parent index for now
    }
    // Done? HF: early_stopping=true once num_beams finished; false once, in addition, the best
    // running beam (normalised by the current length) cannot beat the worst finished one.
    if (last || n_next == 0) g->done = true;
    else if (g->n_fin == nb) {
        if (p->early_stopping) g->done = true;
        else {
            double worst = g->fin[0].score;
            for (int i = 1; i < nb; i++) if (g->fin[i].score < worst) worst = g->fin[i].score;
            double best_running = g->next[0].score / pow((double)g->next[0].n, p->length_penalty);
            if (best_running <= worst) g->done = true;
        }
    }
    if (g->done) return;
    // Slots: the first child of a parent keeps its slot; further children copy it into a slot
    // whose beam has no child (or was never used).
    for (int b = 0; b < nb; b++) claimed[b] = false;
    for (int j = 0; j < n_next; j++) {
        int parent = g->next[j].slot;
        if (!claimed[parent]) { claimed[parent] = true; g->next[j].slot = g->beams[parent].slot; }
        else g->next[j].slot = -1 - parent;
    }
    int n_free = 0;
    bool used[nb];
    for (int s = 0; s < nb; s++) used[s] = false;
    for (int j = 0; j < n_next; j++) if (g->next[j].slot >= 0) used[g->next[j].slot - slot0] = true;
    for (int s = 0; s < nb; s++) if (!used[s]) free_slots[n_free++] = slot0 + s;
    for (int j = 0, f = 0; j < n_next; j++)
        if (g->next[j].slot < 0) {
            int src = g->beams[-1 - g->next[j].slot].slot, dst = free_slots[f++];
            kv_cache_copy(kv, dst, src);
            g->next[j].slot = dst;
        }
    Beam *tmp = g->beams;
    g->beams = g->next;
    g->next = tmp;
    g->k = n_next;
}

static void free_groups(Group *gs, int n, int nb) {
    for (int i = 0; gs && i < n; i++) {
        Group *g = &gs[i];
        free(g->hist);
        free(g->text.buf);
        free(g->text.out);
        for (int b = 0; g->beams && b < nb; b++) {
            free(g->beams[b].toks);
            free(g->next[b].toks);
            free(g->fin[b].toks);
        }
        free(g->beams);
        free(g->next);
        free(g->fin);
    }
    free(gs);
}

static void finish_sampled(Group *g, GenResult *res, const Tokenizer *tok, GenStreamFn stream, void *user, int index) {
    res->n_ids = g->n_hist - g->plen;
    res->ids = xmalloc(sizeof(int32_t) * (res->n_ids + 1));
    memcpy(res->ids, g->hist + g->plen, sizeof(int32_t) * res->n_ids);
    if (tok) text_finish(&g->text, res, stream, user, index);
}

static void finish_beams(Group *g, GenResult *res, const GenParams *p, const Tokenizer *tok, GenStreamFn stream, void *user, int index) {
    const Beam *best = NULL;
    for (int i = 0; i < g->n_fin; i++) if (!best || g->fin[i].score > best->score) best = &g->fin[i];
    if (!best) best = &g->beams[0];  // nothing finished (cannot happen with a token budget)
    res->n_ids = best->n;
    res->ids = xmalloc(sizeof(int32_t) * (best->n + 1));
    memcpy(res->ids, best->toks, sizeof(int32_t) * best->n);
    res->finish = best->finish;
    res->score = best->score;
    if (tok) beam_text(tok, p, g, best, res, stream, user, index);
}

int generate(Model *m, const Tokenizer *tok, const int32_t *const *prompts, const int *prompt_lens, int n,
             const GenParams *p, GenStreamFn stream, void *user, GenResult *results) {
    const ModelConfig *c = &m->cfg;
    int V = c->vocab_size, nb = p->num_beams;
    bool beam = nb > 1 || p->beam_search;
    if (n <= 0) return 0;
    if (nb < 1) return peft_fail("num_beams must be at least 1 (got %d)", nb);
    if (p->max_new_tokens < 0) return peft_fail("max_new_tokens must not be negative (got %d)", p->max_new_tokens);
    if (p->temperature < 0) return peft_fail("temperature must not be negative (got %g)", p->temperature);
    if (p->top_k < 0) return peft_fail("top_k must not be negative (got %d)", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1)) return peft_fail("top_p must be in (0, 1] (got %g)", p->top_p);
    if (!(p->repetition_penalty > 0)) return peft_fail("repetition_penalty must be positive (got %g)", p->repetition_penalty);
    if (p->n_stop && !tok) return peft_fail("stop strings need a tokenizer");
    if (p->n_extra_eos < 0 || p->n_extra_eos > 8) return peft_fail("n_extra_eos must be 0..8 (got %d)", p->n_extra_eos);
    int eos = p->eos_id;
    if (eos == GEN_EOS_DEFAULT) eos = tok && tokenizer_eos(tok) >= 0 ? tokenizer_eos(tok) : c->eos_token_id;
    int bos = tok && tokenizer_bos(tok) >= 0 ? tokenizer_bos(tok) : c->bos_token_id;
    int max_len = 1, total_prompt = 0;
    for (int i = 0; i < n; i++) {
        if (prompt_lens[i] <= 0) return peft_fail("prompt %d is empty (it needs at least one token, e.g. bos)", i);
        for (int j = 0; j < prompt_lens[i]; j++)
            if (prompts[i][j] < 0 || prompts[i][j] >= V) return peft_fail("prompt %d: token id %d is outside the vocabulary (size %d)", i, prompts[i][j], V);
        if (c->arch == ARCH_GPT2 && prompt_lens[i] >= c->n_positions)
            return peft_fail("prompt %d has %d tokens; the model's n_positions %d leaves no room to generate", i, prompt_lens[i], c->n_positions);
        int need = prompt_lens[i] + p->max_new_tokens;
        if (c->arch == ARCH_GPT2 && need > c->n_positions) need = c->n_positions;
        if (need > max_len) max_len = need;
        total_prompt += prompt_lens[i];
    }
    memset(results, 0, sizeof *results * n);
    KVCache *kv = kv_cache_new(m, n * nb, max_len);
    if (!kv) return -1;
    Group *gs = xcalloc(n, sizeof *gs);
    for (int i = 0; i < n; i++) {
        Group *g = &gs[i];
        g->prompt = prompts[i];
        g->plen = prompt_lens[i];
        g->max_gen = p->max_new_tokens;
        if (c->arch == ARCH_GPT2 && g->plen + g->max_gen > c->n_positions) g->max_gen = c->n_positions - g->plen;
        g->at_start = g->plen == 1 && g->prompt[0] == bos;
        g->strip = strip_before(tok, g, NULL, 0);
        g->k = 1;
        gen_rng_seed(&g->rng, p->seed);
        if (!beam) {
            g->hist = xmalloc(sizeof(int32_t) * (g->plen + g->max_gen + 1));
            memcpy(g->hist, g->prompt, sizeof(int32_t) * g->plen);
            g->n_hist = g->plen;
        } else {
            g->beams = xcalloc(nb, sizeof(Beam));
            g->next = xcalloc(nb, sizeof(Beam));
            g->fin = xcalloc(nb, sizeof(Beam));
            for (int b = 0; b < nb; b++) {
                g->beams[b].toks = xmalloc(sizeof(int32_t) * (g->max_gen + 1));
                g->next[b].toks = xmalloc(sizeof(int32_t) * (g->max_gen + 1));
                g->fin[b].toks = xmalloc(sizeof(int32_t) * (g->max_gen + 1));
            }
            g->beams[0].slot = i * nb;
        }
    }
    // Plain greedy decoding asks the cache for the chosen tokens only; so does sampling where the
    // cache's device draws them (a GPU cache, kv_samples_on_device).
    bool plain_greedy = !beam && gen_is_plain_greedy(p), dev_sample = !beam && !plain_greedy && kv_samples_on_device(kv, p);
    bool chosen = plain_greedy || dev_sample;
    float *logits = chosen ? NULL : xmalloc(sizeof(float) * (size_t)n * nb * V);
    int32_t *next = chosen ? xmalloc(sizeof(int32_t) * (size_t)n) : NULL;
    // This step's rows and the next step's (beam search makes more rows than it reads).
    KVRow *rows = xmalloc(sizeof(KVRow) * (size_t)n * nb), *rows2 = xmalloc(sizeof(KVRow) * (size_t)n * nb);
    int *row_group = xmalloc(sizeof(int) * (size_t)n * nb), *row_group2 = xmalloc(sizeof(int) * (size_t)n * nb);
    int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)(total_prompt > n * nb ? total_prompt : n * nb));
    int32_t *ids2 = xmalloc(sizeof(int32_t) * (size_t)n * nb);
    void *work = xmalloc(gen_sample_work_size(V));
    uint8_t *seen = xcalloc((size_t)V * (beam ? omp_get_max_threads() : 1), 1);
    // beam search: each prompt's kept candidates, each row's beam index and best continuations (beam_rows)
    int kept = beam_candidates_kept(p, eos), row_cap = kept < V ? kept : V;
    Cand *top = xmalloc(sizeof(Cand) * (size_t)kept);
    int *row_beam = beam ? xmalloc(sizeof(int) * (size_t)n * nb) : NULL, *n_cands = beam ? xmalloc(sizeof(int) * (size_t)n * nb) : NULL;
    Cand *cands = beam ? xmalloc(sizeof(Cand) * (size_t)n * nb * row_cap) : NULL;
    bool *claimed = xmalloc(sizeof(bool) * nb);
    int *free_slots = xmalloc(sizeof(int) * nb);
    bool training = m->training;
    m->training = false;
    int rc = 0;

    // Prefill: every prompt in one call (beam search: into its first slot).
    int n_rows = 0, n_ids = 0;
    for (int i = 0; i < n; i++) {
        if (gs[i].max_gen == 0) { gs[i].done = true; continue; }
        rows[n_rows] = (KVRow){i * nb, gs[i].plen};
        row_group[n_rows++] = i;
        memcpy(ids + n_ids, gs[i].prompt, sizeof(int32_t) * gs[i].plen);
        n_ids += gs[i].plen;
    }
    while (n_rows > 0) {
        int frc = plain_greedy ? kv_forward_greedy(m, kv, rows, n_rows, ids, next)
                  : dev_sample ? kv_forward_sample(m, kv, rows, n_rows, ids, p, next)
                               : kv_forward(m, kv, rows, n_rows, ids, logits, false);
        if (frc) {
            rc = -1;
            break;
        }
        // Choose the next token(s) of every running prompt; collect the rows of the next step.
        if (beam) {
            for (int i = 0; i < n_rows; i++) row_beam[i] = i > 0 && row_group[i] == row_group[i - 1] ? row_beam[i - 1] + 1 : 0;
            beam_rows(gs, row_group, row_beam, n_rows, logits, V, p, row_cap, cands, n_cands, seen);
        }
        int r = 0, next_rows = 0;
        n_ids = 0;
        while (r < n_rows) {
            int gi = row_group[r];
            Group *g = &gs[gi];
            GenResult *res = &results[gi];
            if (!beam) {
                int id = chosen ? next[r] : gen_sample(logits + (long)r * V, V, p, g->hist, g->n_hist, &g->rng, work, seen);
                r++;
                if (is_eos(p, eos, id)) { g->done = true; res->finish = GEN_FINISH_EOS; }
                else {
                    g->hist[g->n_hist++] = id;
                    if (tok) {
                        size_t k;
                        const char *b = tok_bytes(tok, id, &g->strip, &k);
                        if (text_push(&g->text, b, k, p, stream, user, gi)) { g->done = true; res->finish = GEN_FINISH_STOP; }
                    }
                    if (!g->done && g->n_hist - g->plen >= g->max_gen) { g->done = true; res->finish = GEN_FINISH_LENGTH; }
                }
                if (!g->done) {
                    rows2[next_rows] = (KVRow){gi, 1};
                    row_group2[next_rows++] = gi;
                    ids2[n_ids++] = id;
                } else finish_sampled(g, res, tok, stream, user, gi);
            } else {
                int k = g->k;
                beam_step(g, cands + (long)r * row_cap, n_cands + r, row_cap, kept, p, eos, tok, kv, gi * nb, top, claimed, free_slots);
                r += k;
                if (!g->done)
                    for (int b = 0; b < g->k; b++) {
                        rows2[next_rows] = (KVRow){g->beams[b].slot, 1};
                        row_group2[next_rows++] = gi;
                        ids2[n_ids++] = g->beams[b].toks[g->beams[b].n - 1];
                    }
                else finish_beams(g, res, p, tok, stream, user, gi);
            }
        }
        n_rows = next_rows;
        KVRow *tr = rows; rows = rows2; rows2 = tr;
        int *tg = row_group; row_group = row_group2; row_group2 = tg;
        int32_t *ti = ids; ids = ids2; ids2 = ti;
    }
    // Prompts with no room to generate.
    for (int i = 0; rc == 0 && i < n; i++)
        if (gs[i].max_gen == 0) {
            if (!beam) finish_sampled(&gs[i], &results[i], tok, stream, user, i);
            else { results[i].finish = GEN_FINISH_LENGTH; if (tok) results[i].text = xstrdup(""); if (stream) stream(user, i, NULL, 0); }
        }
    if (rc)
        for (int i = 0; i < n; i++) gen_result_free(&results[i]);
    m->training = training;
    free(free_slots);
    free(claimed);
    free(cands);
    free(n_cands);
    free(row_beam);
    free(top);
    free(seen);
    free(work);
    free(ids);
    free(ids2);
    free(row_group);
    free(row_group2);
    free(rows);
    free(rows2);
    free(logits);
    free(next);
    kv_cache_free(kv);
    free_groups(gs, n, nb);
    return rc;
}

int generate_text(Model *m, const Tokenizer *tok, const char *const *prompts, const size_t *prompt_lens, int n, const GenParams *p,
                  GenStreamFn stream, void *user, GenResult *results) {
    if (!tok) return peft_fail("generate_text needs a tokenizer");
    int32_t **ids = xcalloc(n > 0 ? n : 1, sizeof *ids);
    int *lens = xcalloc(n > 0 ? n : 1, sizeof *lens);
    int rc = 0, bos = tokenizer_bos(tok) >= 0 ? tokenizer_bos(tok) : m->cfg.bos_token_id;
    bool add_bos = tokenizer_add_bos(tok) && !p->template_bos;
    for (int i = 0; i < n && !rc; i++) {
        int32_t *enc = NULL;
        int k = 0;
        if (tokenizer_encode(tok, prompts[i], prompt_lens ? prompt_lens[i] : strlen(prompts[i]), &enc, &k)) { rc = -1; break; }
        bool lead = add_bos || k == 0;
        ids[i] = xmalloc(sizeof(int32_t) * (k + 1));
        if (lead) ids[i][0] = bos;
        memcpy(ids[i] + lead, enc, sizeof(int32_t) * k);
        lens[i] = k + lead;
        free(enc);
    }
    if (!rc) rc = generate(m, tok, (const int32_t *const *)ids, lens, n, p, stream, user, results);
    for (int i = 0; i < n; i++) free(ids[i]);
    free(ids);
    free(lens);
    return rc;
}
