// peft generate --model DIR [--adapter DIR] --prompt TEXT | --prompts FILE [--chat] [sampling options]
// Streams the continuation of each prompt to stdout. With --prompts, each line of FILE is one
// prompt and each gets exactly one output line, in order (newlines in prompts and outputs are
// written as \n, backslashes as \\). An adapter is merged into the weights unless --no-merge.
// --ids prints each prompt's generated token ids instead (to compare with other tools).
#include "peft.h"
#include "cli.h"
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// "\n", "\t", "\r", "\\" -> the characters, in the n bytes of s (in place; NUL bytes are kept).
// Returns the new length.
static size_t unescape(char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            char c = s[i + 1];
            if (c == 'n' || c == 't' || c == 'r' || c == '\\') { s[o++] = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : '\\'; i++; continue; }
        }
        s[o++] = s[i];
    }
    s[o] = 0;
    return o;
}

// Writes prompts' outputs in order while they stream in any order: the first unfinished
// prompt goes straight to stdout, later ones are buffered until it is done.
typedef struct {
    int n, next;
    bool escape;
    char **buf;
    size_t *len, *cap;
    bool *done;
    long tokens;
} Printer;

static void put(const Printer *pr, const char *s, size_t n) {
    if (!pr->escape) { fwrite(s, 1, n, stdout); return; }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n') fputs("\\n", stdout);
        else if (s[i] == '\r') fputs("\\r", stdout);
        else if (s[i] == '\\') fputs("\\\\", stdout);
        else putchar(s[i]);
    }
}

static void advance(Printer *pr) {
    while (pr->next < pr->n) {
        int i = pr->next;
        put(pr, pr->buf[i] ? pr->buf[i] : "", pr->len[i]);
        pr->len[i] = 0;
        if (!pr->done[i]) break;
        putchar('\n');
        pr->next++;
    }
    fflush(stdout);
}

static void on_piece(void *user, int index, const char *piece, size_t len) {
    Printer *pr = user;
    if (piece) {
        if (index == pr->next) { put(pr, piece, len); fflush(stdout); return; }
        if (pr->len[index] + len + 1 > pr->cap[index]) {
            pr->cap[index] = (pr->len[index] + len + 1) * 2;
            pr->buf[index] = xrealloc(pr->buf[index], pr->cap[index]);
        }
        memcpy(pr->buf[index] + pr->len[index], piece, len);
        pr->len[index] += len;
        return;
    }
    pr->done[index] = true;
    if (index == pr->next) advance(pr);
}


// The lines of a file, unescaped, with their lengths (*lens_out): a line may hold NUL bytes.
static char **read_lines(const char *path, int *n_out, size_t **lens_out) {
    size_t len;
    char *text = read_file(path, &len);
    if (!text) return NULL;
    char **lines = NULL;
    size_t *lens = NULL;
    int n = 0;
    for (char *s = text; s < text + len;) {
        char *end = memchr(s, '\n', text + len - s);
        size_t k = end ? (size_t)(end - s) : (size_t)(text + len - s);
        if (k && s[k - 1] == '\r') k--;
        lines = xrealloc(lines, sizeof(char *) * (n + 1));
        lens = xrealloc(lens, sizeof(size_t) * (n + 1));
        lines[n] = xmalloc(k + 1);
        memcpy(lines[n], s, k);
        lens[n] = unescape(lines[n], k);
        n++;
        s = end ? end + 1 : text + len;
    }
    free(text);
    *n_out = n;
    *lens_out = lens ? lens : xcalloc(1, sizeof(size_t));
    return lines ? lines : xcalloc(1, sizeof(char *));
}

// --chat: each prompt as the user turn of the model's chat template, with the generation prompt.
// Generation stops at the template's end-of-turn token too, and no bos is added (the template
// writes its own, as transformers' apply_chat_template does).
static char **chat_prompts(const char *model_dir, const Tokenizer *tok, const char *const *prompts, const size_t *lens, int n, GenParams *p,
                           size_t **out_lens) {
    ChatTemplate ct;
    if (chat_template_load(&ct, model_dir)) return NULL;
    char **out = xcalloc(n, sizeof(char *));
    *out_lens = xcalloc(n, sizeof(size_t));
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        cJSON *msgs = cJSON_CreateArray(), *m = cJSON_CreateObject();
        cJSON_AddItemToObject(m, "role", json_bytes_string("user", 4));
        cJSON_AddItemToObject(m, "content", json_bytes_string(prompts[i], lens ? lens[i] : strlen(prompts[i])));
        cJSON_AddItemToArray(msgs, m);
        rc = chat_template_render(&ct, msgs, NULL, true, &out[i], &(*out_lens)[i]);
        cJSON_Delete(msgs);
    }
    int eot = chat_template_stop_id(&ct, tok);
    if (eot >= 0 && p->eos_id != GEN_EOS_NONE && p->n_extra_eos < 8) p->extra_eos[p->n_extra_eos++] = eot;
    p->template_bos = true;
    chat_template_free(&ct);
    if (!rc) return out;
    for (int i = 0; i < n; i++) free(out[i]);
    free(out);
    free(*out_lens);
    *out_lens = NULL;
    return NULL;
}

int cmd_generate(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *prompt = NULL, *prompts_file = NULL, *stop_last = NULL;
    int max_tokens = 64, top_k = 0, beams = 1, seed = 0, threads = 0, batch = 8;
    float temperature = 0, top_p = 1, rep = 1, length_penalty = 1;
    bool no_merge = false, fp32 = false, ignore_eos = false, chat = false, print_ids = false, no_double_quant = false;
    const char *device = "cpu", *quantize = NULL;
    Option opts[32] = {
        {"model", OPT_STRING, &model_dir, "HF model folder (config.json, safetensors, tokenizer)"},
        {"adapter", OPT_STRING, &adapter_dir, "PEFT adapter folder (LoRA, VeRA, AdaLoRA)"},
        {"prompt", OPT_STRING, &prompt, "the prompt text"},
        {"prompts", OPT_STRING, &prompts_file, "file of prompts, one per line (\\n and \\\\ escapes); one output line each"},
        {"chat", OPT_FLAG, &chat, "each prompt is a user turn of the model's chat template (with the generation prompt); stops at its end of turn"},
        {"max-tokens", OPT_INT, &max_tokens, "most new tokens per prompt (64)"},
        {"temperature", OPT_FLOAT, &temperature, "0 = greedy (default); > 0 samples"},
        {"top-k", OPT_INT, &top_k, "sample from the k most likely tokens (0 = off)"},
        {"top-p", OPT_FLOAT, &top_p, "nucleus sampling mass (1 = off)"},
        {"repetition-penalty", OPT_FLOAT, &rep, "HF repetition penalty (1 = off)"},
        {"beams", OPT_INT, &beams, "beam search with N beams (1 = off)"},
        {"length-penalty", OPT_FLOAT, &length_penalty, "beam score = logprob / length^X (1)"},
        {"seed", OPT_INT, &seed, "sampling seed (0)"},
        {"stop", OPT_STRING, &stop_last, "stop string, repeatable (\\n escapes); the output ends before it"},
        {"no-merge", OPT_FLAG, &no_merge, "apply the adapter live instead of merging it into the weights"},
        {"threads", OPT_INT, &threads, "CPU threads (default: OMP_NUM_THREADS or all cores)"},
        {"batch", OPT_INT, &batch, "prompts generated together with --prompts (8)"},
        {"ignore-eos", OPT_FLAG, &ignore_eos, "do not stop at the end-of-sequence token (benchmarks)"},
        {"ids", OPT_FLAG, &print_ids, "print the generated token ids, space separated (\"eos\" last when it stopped there), a line per prompt"},
        {"device", OPT_STRING, &device, "cpu (default) or cuda"},
        {"fp32", OPT_FLAG, &fp32, "fp32 weights: with --device cuda, and activations (default bf16); on the CPU, no bf16 copy of weights that are exactly bf16"},
    };
    int n_opts = 0, qt;
    bool nested;
    while (opts[n_opts].name) n_opts++;
    n_opts += quant_options(opts + n_opts, &quantize, &no_double_quant);
    if (parse_options("generate", argc, argv, opts, n_opts, NULL, 0, NULL)) return 2;
    if (quant_resolve("generate", quantize, no_double_quant, &qt, &nested)) return 2;

    if (!model_dir) { fprintf(stderr, "peft generate: --model DIR is required\n"); return 2; }
    if (!prompt == !prompts_file) { fprintf(stderr, "peft generate: give exactly one of --prompt TEXT or --prompts FILE\n"); return 2; }
    if (max_tokens < 0 || beams < 1 || batch < 1 || threads < 0) {
        fprintf(stderr, "peft generate: --max-tokens must be >= 0, --beams, --batch >= 1, --threads >= 0\n");
        return 2;
    }
    // --stop may be given several times (the option parser keeps the last): collect them all.
    char **stops = xcalloc(argc, sizeof(char *));
    int n_stop = 0;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--stop")) { stops[n_stop] = xstrdup(argv[++i]); unescape(stops[n_stop], strlen(stops[n_stop])); n_stop++; }
    if (strcmp(device, "cpu") && strcmp(device, "cuda")) { fprintf(stderr, "peft generate: --device must be cpu or cuda\n"); return 2; }
    if (threads > 0) { omp_set_num_threads(threads); openblas_set_num_threads(threads); }

    int rc = 1, n_prompts = 1;
    char **lines = NULL, **chats = NULL;
    size_t *line_lens = NULL, *chat_lens = NULL;
    Tokenizer *tok = NULL;
    Model *m = NULL;
    if (prompts_file && !(lines = read_lines(prompts_file, &n_prompts, &line_lens))) { rc = fail_with_library_error(); goto out; }
    m = model_load_quantized(model_dir, qt, nested);
    if (!m || model_require_decoder(&m->cfg, "peft generate")) { rc = fail_with_library_error(); goto out; }
    if (!(tok = tokenizer_load(model_dir))) { rc = fail_with_library_error(); goto out; }
    if (adapter_dir) {
        if (adapters_load(m, adapter_dir)) { rc = fail_with_library_error(); goto out; }
        if (!no_merge && qt) fprintf(stderr, "peft generate: the adapter applies live (a quantized base is not merged into)\n");
        if (!no_merge && adapter_embed_merge_changes_head(m->adapters)) {
            fprintf(stderr, "peft generate: the adapter applies live (merging LoRA on the tied embedding, as PEFT's merge does, would change the output head too)\n");
            no_merge = true;
        }
        if (!no_merge) adapters_merge(m);
    }
    // On the CPU, weights that are exactly bf16 (after any merge) are read in bf16: half the bytes a token.
    if (!strcmp(device, "cpu") && !fp32) model_keep_bf16(m, true);
    if (!strcmp(device, "cuda") && m->adapters && (no_merge || qt) && !gpu_infer_supports(method_get(m->adapters->cfg.type)->gpu)) {
        peft_fail("%s: %s adapters do not run live on the GPU yet: without --no-merge they are merged (and run), or use --device cpu",
                  adapter_dir, method_get(m->adapters->cfg.type)->title);
        rc = fail_with_library_error();
        goto out;
    }
    if (!strcmp(device, "cuda") && no_merge && adapter_embed_what(m->adapters)) {  // merged, it is in the weights the GPU copies
        peft_fail("%s: %s does not run live on the GPU yet: merged (without --no-merge, an untied embedding) it runs, or use --device cpu", adapter_dir,
                  adapter_embed_what(m->adapters));
        rc = fail_with_library_error();
        goto out;
    }
    if (!strcmp(device, "cuda") && gpu_inference_attach(m, fp32 ? GPU_FP32 : GPU_BF16)) { rc = fail_with_library_error(); goto out; }
    GenParams p;
    gen_params_default(&p);
    gen_params_read_eos(model_dir, &p);
    if (ignore_eos) { p.eos_id = GEN_EOS_NONE; p.n_extra_eos = 0; }
    p.max_new_tokens = max_tokens;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.repetition_penalty = rep;
    p.num_beams = beams;
    p.length_penalty = length_penalty;
    p.seed = (uint64_t)(uint32_t)seed;
    p.stop = (const char *const *)stops;
    p.n_stop = n_stop;
    const char *single[1] = {prompt};
    const char *const *all = lines ? (const char *const *)lines : single;
    const size_t *all_lens = line_lens;
    if (chat && !(chats = chat_prompts(model_dir, tok, all, all_lens, n_prompts, &p, &chat_lens))) { rc = fail_with_library_error(); goto out; }
    if (chat) { all = (const char *const *)chats; all_lens = chat_lens; }
    int per_call = lines ? batch : 1;
    Printer pr = {.escape = lines != NULL};
    GenResult *res = xcalloc(per_call, sizeof *res);
    pr.buf = xcalloc(per_call, sizeof(char *));
    pr.len = xcalloc(per_call, sizeof(size_t));
    pr.cap = xcalloc(per_call, sizeof(size_t));
    pr.done = xcalloc(per_call, sizeof(bool));
    double t0 = now_seconds();
    long tokens = 0;
    rc = 0;
    for (int start = 0; start < n_prompts && !rc; start += per_call) {
        int n = n_prompts - start < per_call ? n_prompts - start : per_call;
        pr.n = n;
        pr.next = 0;
        memset(pr.done, 0, sizeof(bool) * per_call);
        memset(pr.len, 0, sizeof(size_t) * per_call);
        if (generate_text(m, tok, all + start, all_lens ? all_lens + start : NULL, n, &p, print_ids ? NULL : on_piece, &pr, res)) {
            rc = fail_with_library_error();
            break;
        }
        for (int i = 0; i < n; i++) {
            for (int k = 0; print_ids && k < res[i].n_ids; k++) printf("%s%d", k ? " " : "", res[i].ids[k]);
            if (print_ids) printf("%s\n", res[i].finish == GEN_FINISH_EOS ? (res[i].n_ids ? " eos" : "eos") : "");
            tokens += res[i].n_ids;
            gen_result_free(&res[i]);
        }
    }
    double dt = now_seconds() - t0;
    if (!rc) fprintf(stderr, "peft generate: %ld tokens in %.2f s (%.1f tokens/s)\n", tokens, dt, dt > 0 ? tokens / dt : 0.0);
    for (int i = 0; i < per_call; i++) free(pr.buf[i]);
    free(pr.buf);
    free(pr.len);
    free(pr.cap);
    free(pr.done);
    free(res);
out:
    tokenizer_free(tok);
    if (m) gpu_inference_detach(m);
    model_free(m);
    for (int i = 0; lines && i < n_prompts; i++) free(lines[i]);
    for (int i = 0; chats && i < n_prompts; i++) free(chats[i]);
    free(lines);
    free(line_lens);
    free(chats);
    free(chat_lens);
    for (int i = 0; i < n_stop; i++) free(stops[i]);
    free(stops);
    return rc;
}
