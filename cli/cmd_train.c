// peft train: options -> TrainConfig -> train_run, with a progress bar (or plain lines when
// stderr is not a terminal). Ctrl-C saves a checkpoint and exits; --resume continues from it.
#include "cli.h"
#include "peft.h"
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// The data options train, eval and data share (cmd_eval.c and cmd_data.c use them too). Returns how many it wrote.
int data_options(Option *o, DataOptions *d, DataFlags *f) {
    const Option list[] = {
        {"seq-len", OPT_INT, &d->seq_len, "longest sequence in tokens; longer examples are truncated (default: min(512, model positions))"},
        {"format", OPT_STRING, &f->format, "records of .jsonl/.json/.csv data: auto (by their fields), text, prompt-completion, messages, "
                                           "sharegpt, alpaca (Stanford's prompt) or alpaca-chat (the chat template)"},
        {"train-on-prompt", OPT_FLAG, &d->train_on_prompt, "loss on every token (default: on completions, Alpaca outputs and assistant turns only)"},
        {"prompt-column", OPT_STRING, &d->prompt_column, "CSV column holding the prompt (default: prompt, else mr)"},
        {"completion-column", OPT_STRING, &d->completion_column, "CSV column holding the completion (default: completion, else ref)"},
        {"text-column", OPT_STRING, &d->text_column, "CSV column of plain text, when there is no prompt column (default: text)"},
        {"separator", OPT_STRING, &d->separator, "text between prompt and completion (default: none for JSONL, newline for CSV)"},
        {"cache-dir", OPT_STRING, &d->cache_dir, "where to cache tokenized data when the data's folder is read-only (train: --out)"},
        {"no-cache", OPT_FLAG, &f->no_cache, "do not read or write the tokenized-data cache"},
    };
    memcpy(o, list, sizeof list);
    return sizeof list / sizeof *list;
}

int classify_options(Option *o, const char **task, ClassifyColumns *cols) {
    const Option list[] = {
        {"task", OPT_STRING, task, "lm (default: causal language modelling) or classify (an encoder's sequence classification: "
                                   "CSV / JSONL with --text-column, --label-column and, for pairs, --text-pair-column)"},
        {"label-column", OPT_STRING, &cols->label, "--task classify: the label's column (default label)"},
        {"text-pair-column", OPT_STRING, &cols->text_pair, "--task classify: the second text's column, for text pairs (default: none)"},
    };
    memcpy(o, list, sizeof list);
    return sizeof list / sizeof *list;
}

int task_is_classify(const char *command, const char *task) {
    if (!task || !strcmp(task, "lm")) return 0;
    if (!strcmp(task, "classify")) return 1;
    fprintf(stderr, "peft %s: --task must be lm or classify (got %s)\n", command, task);
    return -1;
}

int data_options_finish(DataOptions *d, const DataFlags *f) {
    d->no_cache = f->no_cache;
    return f->format ? data_format_parse(f->format, &d->format) : 0;
}

static void on_sigint(int sig) {
    train_request_stop();
    signal(sig, SIG_DFL);  // a second Ctrl-C ends the process at once
}

typedef struct {
    Progress *progress;
    int log_every;
    bool bar, interrupted;
} Ui;

static void ui_start(void *user, int first, int total) {
    Ui *ui = user;
    ui->progress = progress_new(stderr, ui->bar, first, total, ui->log_every);
}

static void ui_step(void *user, const TrainStepInfo *s) {
    Ui *ui = user;
    char extra[128];
    int k = snprintf(extra, sizeof extra, "lr %.2e  grad_norm %.3f", s->lr, s->grad_norm);
    if (s->budget >= 0) snprintf(extra + k, sizeof extra - k, "  budget %d", s->budget);
    progress_update(ui->progress, s->step, s->loss, s->tokens_per_s, ui->bar ? NULL : extra);
}

static void ui_eval(void *user, const EvalInfo *e) {
    progress_print(((Ui *)user)->progress, "step %d: validation loss %.4f, perplexity %.2f (%ld tokens)", e->step, e->loss, e->ppl, e->n_tokens);
}

static void ui_message(void *user, const char *text) { progress_print(((Ui *)user)->progress, "%s", text); }

// "lora 2e-4, vera 1e-2, ..." or "lora 8, vera 256, ...": a per-method default for --help.
static const char *method_defaults(char *buf, size_t cap, bool lr) {
    size_t len = 0;
    for (int i = 0; i < METHOD_COUNT && len < cap; i++) {
        const Method *m = method_get((MethodId)i);
        if (!lr && (!m->peft_type || m->config_base)) continue;  // r: adapters whose rank is r (AdaLoRA's is init_r)
        char v[32];
        if (lr) {  // one significant digit as 2e-4, not 0.0002 or 2e-04
            int e = (int)floor(log10(m->default_lr) + 1e-6);  // 0.01f is a hair below 1e-2
            snprintf(v, sizeof v, "%.0fe%d", m->default_lr / pow(10, e), e);
        } else snprintf(v, sizeof v, "%d", m->default_r);
        len += (size_t)snprintf(buf + len, cap - len, "%s%s %s", len ? ", " : "", m->name, v);
    }
    return buf;
}

int cmd_train(int argc, char **argv) {
    TrainConfig c;
    train_config_defaults(&c, METHOD_LORA);
    const char *method = NULL, *targets = NULL, *schedule = "linear", *device = "cpu", *lora_options = NULL;
    int r = 0, seed = 42, log_every = 10;
    float clip = c.max_grad_norm;
    bool rslora = false, no_allocate = false, no_double_quant = false;
    const char *quantize = NULL, *init_weights = NULL, *task = NULL, *recompute = NULL;
    ClassifyColumns cols = {0};
    DataFlags data_flags = {0};
    char methods[128], rs[128], lrs[128], help_method[160], help_r[200], help_lr[200];
    method_names(methods, sizeof methods, " | ", " | ", LIST_NAMES);
    snprintf(help_method, sizeof help_method, "%s (default %s)", methods, method_name(METHOD_LORA));
    snprintf(help_r, sizeof help_r, "rank (default: %s; AdaLoRA: same as --init-r)", method_defaults(rs, sizeof rs, false));
    snprintf(help_lr, sizeof help_lr, "peak learning rate (default: %s)", method_defaults(lrs, sizeof lrs, true));
    Option opts[64] = {
        {"model", OPT_STRING, &c.model_dir, "base model folder (Hugging Face layout)"},
        {"data", OPT_STRING, &c.data_path, "training data: text, .jsonl or .csv file, or a folder of them"},
        {"val", OPT_STRING, &c.val_path, "validation data file or folder"},
        {"val-fraction", OPT_FLOAT, &c.val_fraction, "hold out this fraction of --data for validation"},
        {"out", OPT_STRING, &c.out_dir, "output folder: adapter (or model), train_log.jsonl, loss.svg (*.partial.* until saved), checkpoint/"},
        {"overwrite", OPT_FLAG, &c.overwrite, "replace the outputs of another run in --out (a folder holding them is refused otherwise)"},
        {"head-only", OPT_FLAG, &c.head_only, "--task classify: train the classifier head alone, the base frozen (linear probing; "
                                               "--method full's model folder, the base's weights and the trained head)"},
        {"no-base-dropout", OPT_FLAG, &c.no_base_dropout, "train without the base model's dropout (config.json's resid_pdrop, attention_dropout, ...: not implemented, so refused otherwise)"},
        {"method", OPT_STRING, &method, help_method},
        {"r", OPT_INT, &r, help_r},
        {"alpha", OPT_FLOAT, &c.adapter.alpha, "lora_alpha (default 8)"},
        {"targets", OPT_STRING, &targets, "modules to adapt: names (comma-separated), all-linear, or re:REGEX (default: PEFT's)"},
        {"dropout", OPT_FLOAT, &c.adapter.dropout, "adapter dropout (default 0)"},
        {"rslora", OPT_FLAG, &rslora, "LoRA: scale by alpha/sqrt(r)"},
        {"lora-options", OPT_STRING, &lora_options, "JSON file of PEFT's exclude_modules, layers_to_transform, layers_pattern, "
                                                    "rank_pattern, alpha_pattern, bias (as adapter_config.json spells them)"},
        {"init-lora-weights", OPT_STRING, &init_weights, "LoRA: true (default), false, gaussian, pissa, pissa_niter_K or olora (PiSSA / OLoRA: saved converted to a rank-2r LoRA of the original base)"},
        {"d-initial", OPT_FLOAT, &c.adapter.d_initial, "VeRA: initial lambda_d (default 0.1)"},
        {"init-r", OPT_INT, &c.adapter.init_r, "AdaLoRA: initial rank (default 12)"},
        {"target-r", OPT_INT, &c.adapter.target_r, "AdaLoRA: average target rank (default 8)"},
        {"tinit", OPT_INT, &c.adapter.tinit, "AdaLoRA: steps before pruning starts (default 0)"},
        {"tfinal", OPT_INT, &c.adapter.tfinal, "AdaLoRA: final steps at the target budget (default 0)"},
        {"delta-t", OPT_INT, &c.adapter.deltaT, "AdaLoRA: steps between budget allocations (default 1)"},
        {"total-step", OPT_INT, &c.adapter.total_step, "AdaLoRA: schedule length (default: the run's steps)"},
        {"orth-reg-weight", OPT_FLOAT, &c.adapter.orth_reg_weight, "AdaLoRA: orthogonality regulariser weight (default 0.5)"},
        {"no-allocate", OPT_FLAG, &no_allocate, "AdaLoRA: do not run the rank allocator"},
        {"lr", OPT_FLOAT, &c.lr, help_lr},
        {"schedule", OPT_STRING, &schedule, "learning-rate decay: linear, cosine or constant (default linear)"},
        {"warmup", OPT_INT, &c.warmup_steps, "linear warm-up steps (default 0)"},
        {"epochs", OPT_INT, &c.epochs, "passes over the data (default 1)"},
        {"steps", OPT_INT, &c.max_steps, "optimizer steps (overrides --epochs)"},
        {"batch", OPT_INT, &c.batch, "sequences per micro-batch (default 4)"},
        {"pack", OPT_FLAG, &c.pack, "several examples per sequence, each attending only to itself, positions from 0"},
        {"grad-accum", OPT_INT, &c.grad_accum, "micro-batches per optimizer step (default 1)"},
        {"clip", OPT_FLOAT, &clip, "clip the gradient norm to this (default 1; 0 = off)"},
        {"weight-decay", OPT_FLOAT, &c.weight_decay, "AdamW weight decay (default 0)"},
        {"seed", OPT_INT, &seed, "random seed (default 42)"},
        {"threads", OPT_INT, &c.threads, "CPU threads (default: all)"},
        {"eval-every", OPT_INT, &c.eval_every, "evaluate on the validation data every N steps (always at start and end)"},
        {"eval-batch", OPT_INT, &c.eval_batch, "sequences per evaluation batch (default: --batch)"},
        {"save-every", OPT_INT, &c.save_every, "save a checkpoint every N steps"},
        {"resume", OPT_FLAG, &c.resume, "continue from --out's checkpoint"},
        {"log-every", OPT_INT, &log_every, "without a terminal, print a progress line every N steps (default 10)"},
        {"device", OPT_STRING, &device, "cpu (default) or cuda"},
        {"fp32", OPT_FLAG, &c.fp32, "with --device cuda: fp32 compute (parity mode) instead of bf16"},
        {"recompute", OPT_STRING, &recompute, "with --device cuda: recompute in backward instead of keeping (less memory): mlp (the MLP's "
                                              "up-projections) or layer (every block; only the block inputs are kept)"},
    };
    int n = 0;
    while (opts[n].name) n++;
    n += data_options(opts + n, &c.data, &data_flags);
    n += quant_options(opts + n, &quantize, &no_double_quant);
    n += classify_options(opts + n, &task, &cols);
    char *pos[1];
    int rc = parse_options("train", argc, argv, opts, n, pos, 0, NULL);
    if (rc) { train_config_free(&c); return rc == 1 ? 0 : 2; }
    int qt;
    if (quant_resolve("train", quantize, no_double_quant, &qt, &c.double_quant)) { train_config_free(&c); return 2; }
    c.quantize = qt;
    if (!c.model_dir || !c.data_path || !c.out_dir) {
        fprintf(stderr, "usage: peft train --model DIR --data PATH --out DIR [--method %s] [options] (see --help)\n", methods);
        train_config_free(&c);
        return 2;
    }
    if (!method) method = method_name(c.head_only ? METHOD_FULL : METHOD_LORA);
    if (method_parse(method, &c.method) || lr_schedule_parse(schedule, &c.schedule) || data_options_finish(&c.data, &data_flags)) {
        train_config_free(&c);
        return fail_with_library_error();
    }
    if (!r) c.adapter.r = method_get(c.method)->default_r;  // the method's PEFT default
    if (r) c.adapter.r = c.method == METHOD_ADALORA ? (c.adapter.init_r = r) : r;
    if (targets) adapter_config_set_targets(&c.adapter, targets);
    c.adapter.type = c.method;
    if (lora_options && adapter_layout_read_file(&c.adapter, lora_options)) {
        train_config_free(&c);
        return fail_with_library_error();
    }
    c.adapter.use_rslora = rslora;
    if (init_weights && c.method != METHOD_LORA) {
        fprintf(stderr, "peft train: --init-lora-weights is a LoRA option (--method %s has its own initialisation)\n", method_name(c.method));
        train_config_free(&c);
        return 2;
    }
    if (init_weights && lora_init_parse(&c.adapter, init_weights, "--init-lora-weights")) {
        train_config_free(&c);
        return fail_with_library_error();
    }
    c.adalora_allocate = !no_allocate;
    c.max_grad_norm = clip;
    c.seed = (uint64_t)(uint32_t)seed;
    c.cuda = !strcmp(device, "cuda");
    if (recompute && strcmp(recompute, "mlp") && strcmp(recompute, "layer")) {
        fprintf(stderr, "peft train: --recompute must be mlp or layer (got \"%s\")\n", recompute);
        train_config_free(&c);
        return 2;
    }
    c.recompute = !recompute ? 0 : !strcmp(recompute, "mlp") ? 1 : 2;  // gpu.h's GpuRecompute
    if (!c.cuda && strcmp(device, "cpu")) {
        fprintf(stderr, "peft train: --device must be cpu or cuda\n");
        train_config_free(&c);
        return 2;
    }

    Ui ui = {.bar = isatty(fileno(stderr)), .log_every = log_every};
    TrainCallbacks cb = {ui_start, ui_step, ui_eval, ui_message, &ui};
    struct sigaction sa = {.sa_handler = on_sigint}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    TrainResult res;
    int classify = task_is_classify("train", task);
    cols.text = c.data.text_column;
    rc = classify < 0 ? -1 : classify ? classify_train(&c, &cols, &cb, &res) : train_run(&c, &cb, &res);
    sigaction(SIGINT, &old, NULL);
    progress_free(ui.progress);
    if (rc) { train_config_free(&c); return classify < 0 ? 2 : fail_with_library_error(); }
    if (res.stopped) {
        fprintf(stderr, "stopped at step %d of %d; the checkpoint is in %s/checkpoint: continue with --resume\n", res.steps_done,
                res.total_steps, c.out_dir);
        train_config_free(&c);
        return 130;  // interrupted by SIGINT, as shells report it
    }
    fprintf(stderr, "done: %d steps, last loss %.4f", res.steps_done, res.last_loss);
    if (res.n_val && !classify) fprintf(stderr, ", validation loss %.4f -> %.4f", res.first_val_loss, res.last_val_loss);
    fprintf(stderr, "; output in %s\n", c.out_dir);
    train_config_free(&c);
    return 0;
}
