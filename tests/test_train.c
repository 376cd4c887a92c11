// test_train.c: training on the tiny GPT-2 of test_data.c. Validation loss goes down on real text;
// an interrupted and resumed run repeats the uninterrupted one's losses bit for bit (LoRA with
// dropout and gradient accumulation across epochs, and AdaLoRA with its allocator); a stop request
// (what Ctrl-C does) saves a checkpoint; the outputs (adapter, full model, log, SVG) load back and
// evaluate to the loss training reported; an empty dataset is an error; weight decay skips the 1-D
// tensors of full fine-tuning only.
#include "test.h"
#include "safetensors.h"
#include "train.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers.h"

// ---------------------------------------------------------------------------------------------
// Data: rows of the E2E dev set when ../shared has it, else similar rows made here.

static char *e2e_rows(int first, int n) {
    const char *candidates[] = {"../shared/data/e2e/devset.csv", "shared/data/e2e/devset.csv"};
    char *text = NULL;
    for (int i = 0; i < 2 && !text; i++) text = file_exists(candidates[i]) ? read_file(candidates[i], NULL) : NULL;
    size_t cap = 256 + (size_t)n * 400, len = 0;
    char *out = xmalloc(cap);
    len += snprintf(out, cap, "mr,ref\n");
    if (text) {  // E2E rows are one line each: skip the header and `first` rows
        char *line = strchr(text, '\n') + 1;
        for (int i = 0; i < first && line; i++) line = strchr(line, '\n') + 1;
        for (int i = 0; i < n && line && *line; i++) {
            char *end = strchr(line, '\n');
            size_t k = end ? (size_t)(end - line + 1) : strlen(line);
            if (len + k + 1 > cap) break;
            memcpy(out + len, line, k);
            len += k;
            line = end ? end + 1 : NULL;
        }
        out[len] = 0;
        free(text);
        return out;
    }
    static const char *names[] = {"Alimentum", "Aromi", "The Eagle", "Zizzi", "Cotto", "Loch Fyne"};
    static const char *foods[] = {"Italian", "Chinese", "French", "English", "Indian"};
    static const char *areas[] = {"city centre", "riverside"};
    for (int i = first; i < first + n; i++) {
        const char *nm = names[i % 6], *fd = foods[(i / 6) % 5], *ar = areas[(i / 30) % 2];
        len += snprintf(out + len, cap - len, "\"name[%s], food[%s], area[%s]\",%s serves %s food in the %s.\n", nm, fd, ar, nm, fd, ar);
    }
    return out;
}

static char *write_text(const char *dir, const char *name, char *text) {
    char *p = path_join(dir, name);
    write_file_atomic(p, text, strlen(text));
    free(text);
    return p;
}

// ---------------------------------------------------------------------------------------------
// Running

typedef struct {
    int n;
    double loss[256];
    int budget[256];
    int stop_at;  // call train_request_stop() after this step (0: never)
} Record;

static void on_step(void *user, const TrainStepInfo *s) {
    Record *r = user;
    if (r->n < 256) { r->loss[r->n] = s->loss; r->budget[r->n++] = s->budget; }
    if (r->stop_at && s->step == r->stop_at) train_request_stop();
}

static int run(TrainConfig *c, Record *rec, TrainResult *res) {
    TrainCallbacks cb = {.on_step = on_step, .user = rec};
    int rc = train_run(c, &cb, res);
    if (rc) fprintf(stderr, "  train_run: %s\n", peft_last_error());
    return rc;
}

static TrainConfig small_config(MethodId method, const char *data, const char *out) {
    TrainConfig c;
    train_config_defaults(&c, method);
    c.model_dir = test_tiny_model();
    c.data_path = data;
    c.out_dir = out;
    c.data.seq_len = 256;
    c.data.no_cache = true;
    c.batch = 4;
    c.seed = 3;
    c.threads = 1;  // tiny matrices: more threads only wait on each other
    return c;
}

static bool same_file(const char *a, const char *b) {
    size_t la, lb;
    char *x = read_file(a, &la), *y = read_file(b, &lb);
    bool same = x && y && la == lb && !memcmp(x, y, la);
    free(x);
    free(y);
    return same;
}

static int count_lines_with(const char *path, const char *needle) {
    char *text = read_file(path, NULL);
    int n = 0;
    for (char *p = text; p && (p = strstr(p, needle)); p++) n++;
    free(text);
    return n;
}

// ---------------------------------------------------------------------------------------------

TEST(train_lora_lowers_validation_loss) {
    const char *dir = test_tmpdir();
    char *train = write_text(dir, "train.csv", e2e_rows(0, 160)), *val = write_text(dir, "val.csv", e2e_rows(400, 40));
    char *out = path_join(dir, "out");
    TrainConfig c = small_config(METHOD_LORA, train, out);
    c.val_path = val;
    c.batch = 8;
    c.max_steps = 30;
    c.data.seq_len = 128;      // attention's cost grows with the square of the length: keep it short,
    c.data.text_column = "ref";  // and train on the E2E references alone (the mr prompts are long)
    c.lr = 1e-2f;
    c.adapter.alpha = 16;
    adapter_config_set_targets(&c.adapter, "c_attn,c_proj,c_fc");
    Record rec = {0};
    TrainResult res;
    CHECK(run(&c, &rec, &res) == 0);
    fprintf(stderr, "  validation loss %.4f -> %.4f over %d steps (train loss %.4f -> %.4f)\n", res.first_val_loss,
            res.last_val_loss, res.steps_done, rec.loss[0], rec.loss[rec.n - 1]);
    CHECK(res.steps_done == 30 && rec.n == 30 && !res.stopped);
    CHECK_MSG(res.last_val_loss < res.first_val_loss - 1.0, "%g -> %g", res.first_val_loss, res.last_val_loss);
    // The outputs: a PEFT adapter folder, the log (30 steps + 2 evaluations), the loss curve.
    const char *files[] = {"adapter_config.json", "adapter_model.safetensors", "train_log.jsonl", "loss.svg"};
    for (int i = 0; i < 4; i++) {
        char *p = path_join(out, files[i]);
        CHECK_MSG(file_exists(p), "%s missing", p);
        free(p);
    }
    char *log = path_join(out, "train_log.jsonl"), *svg = path_join(out, "loss.svg");
    CHECK(count_lines_with(log, "\"grad_norm\"") == 30 && count_lines_with(log, "\"eval_loss\"") == 2);
    CHECK(count_lines_with(svg, "<polyline") == 2);
    // The saved adapter, loaded back, scores the validation data as training last did.
    EvalConfig ec = {.model_dir = c.model_dir, .adapter_dir = out, .data_path = val, .batch = 8, .threads = 1};
    ec.data = c.data;
    EvalInfo e;
    CHECK_MSG(eval_run(&ec, &e, NULL, NULL) == 0, "%s", peft_last_error());
    CHECK_NEAR(e.loss, res.last_val_loss, 1e-5);
    ec.adapter_dir = NULL;
    CHECK(eval_run(&ec, &e, NULL, NULL) == 0);
    CHECK_NEAR(e.loss, res.first_val_loss, 1e-5);  // the base model: the loss before training
    train_config_free(&c);
    free(log);
    free(svg);
    free(train);
    free(val);
    free(out);
}

// Train `steps` steps straight, and again stopped after `stop` steps and resumed: the losses,
// the log and the final adapter must be the same.
static void check_resume(int *failed_, MethodId method, int steps, int stop, int threads) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "d.csv", e2e_rows(0, 22));  // 6 micro-batches of 4 (the last one 2): 3 steps an epoch
    char *out_a = path_join(dir, "a"), *out_b = path_join(dir, "b");
    TrainConfig c = small_config(method, data, out_a);
    c.max_steps = steps;
    c.threads = threads;
    c.data.seq_len = 128;
    c.data.text_column = "ref";
    c.grad_accum = 2;
    c.lr = 5e-3f;
    c.warmup_steps = 2;
    c.schedule = SCHED_COSINE;
    c.adapter.dropout = 0.1f;
    if (method == METHOD_ADALORA) { c.adapter.init_r = 4; c.adapter.target_r = 2; c.adapter.tinit = 2; c.adapter.tfinal = 3; }
    Record a = {0}, b1 = {0}, b2 = {0};
    TrainResult ra, rb;
    CHECK(run(&c, &a, &ra) == 0 && a.n == steps);
    c.out_dir = out_b;
    c.stop_after = stop;
    CHECK(run(&c, &b1, &rb) == 0);
    CHECK(rb.stopped && rb.steps_done == stop && b1.n == stop);
    char *ckpt = path_join(out_b, "checkpoint/state.json");
    CHECK(file_exists(ckpt));
    free(ckpt);
    c.stop_after = 0;
    c.resume = true;
    CHECK(run(&c, &b2, &rb) == 0);
    CHECK(rb.first_step == stop && rb.steps_done == steps && b2.n == steps - stop && !rb.stopped);
    for (int i = 0; i < steps; i++) {
        double got = i < stop ? b1.loss[i] : b2.loss[i - stop];
        int budget = i < stop ? b1.budget[i] : b2.budget[i - stop];
        CHECK_MSG(memcmp(&got, &a.loss[i], sizeof got) == 0, "step %d: loss %.17g resumed, %.17g straight", i + 1, got, a.loss[i]);
        CHECK_MSG(budget == a.budget[i], "step %d: budget %d resumed, %d straight", i + 1, budget, a.budget[i]);
    }
    char *fa = path_join(out_a, "adapter_model.safetensors"), *fb = path_join(out_b, "adapter_model.safetensors");
    char *ca = path_join(out_a, "adapter_config.json"), *cb = path_join(out_b, "adapter_config.json");
    char *log = path_join(out_b, "train_log.jsonl");
    CHECK_MSG(same_file(fa, fb) && same_file(ca, cb), "the resumed run saved a different adapter");
    CHECK(count_lines_with(log, "\"grad_norm\"") == steps);  // the log has each step once
    if (method == METHOD_ADALORA) {
        CHECK(count_lines_with(log, "\"budget\"") == steps && count_lines_with(log, "\"ranks\"") == steps);
        CHECK(a.budget[0] == 4 * 2 && a.budget[steps - 1] == 2 * 2);  // init_r, then target_r, times 2 modules (c_attn)
    }
    train_config_free(&c);
    free(fa);
    free(fb);
    free(ca);
    free(cb);
    free(log);
    free(data);
    free(out_a);
    free(out_b);
}

// Two threads: OpenMP's reductions must not make the runs differ either.
TEST(train_resume_reproduces_lora_losses) { check_resume(failed_, METHOD_LORA, 6, 2, 2); }
TEST(train_resume_reproduces_adalora_losses) { check_resume(failed_, METHOD_ADALORA, 10, 4, 1); }

TEST(train_stop_request_saves_checkpoint) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "d.csv", e2e_rows(0, 16)), *out = path_join(dir, "out");
    TrainConfig c = small_config(METHOD_LORA, data, out);
    c.max_steps = 10;
    Record rec = {.stop_at = 2};  // what the CLI's SIGINT handler does
    TrainResult res;
    CHECK(run(&c, &rec, &res) == 0);
    CHECK(res.stopped && res.steps_done == 2);
    char *state = path_join(out, "checkpoint/state.json"), *adapter = path_join(out, "adapter_model.safetensors");
    CHECK(file_exists(state) && !file_exists(adapter));
    // Resuming with other settings is refused, naming what changed.
    c.resume = true;
    c.batch = 2;
    CHECK(train_run(&c, NULL, &res) != 0);
    CHECK_MSG(strstr(peft_last_error(), "batch"), "%s", peft_last_error());
    train_config_free(&c);
    free(state);
    free(adapter);
    free(data);
    free(out);
}

// Resumes a 3-step run stopped after 2 from its checkpoint with the last tensor whose name starts
// with `tensor` corrupted by corrupt(): the run must fail with a message holding `where` and
// `problem`, and save nothing.
static void check_bad_checkpoint(int *failed_, MethodId method, const char *tensor, void (*corrupt)(char *bytes, const StTensor *m),
                                 const char *where, const char *problem) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "d.csv", e2e_rows(0, 16)), *out = path_join(dir, "out");
    TrainConfig c = small_config(method, data, out);
    c.max_steps = 3;
    c.stop_after = 2;
    c.adapter.init_r = 2;  // AdaLoRA: a schedule that fits 3 steps
    c.adapter.target_r = 1;
    c.adapter.tinit = c.adapter.tfinal = 1;
    TrainResult res;
    CHECK(train_run(&c, NULL, &res) == 0 && res.stopped);
    char *tensors = path_join(out, "checkpoint/state.safetensors"), *adapter = path_join(out, "adapter_model.safetensors");
    size_t len;
    char *bytes = read_file(tensors, &len);
    SafeTensors st;
    CHECK(bytes && st_parse(&st, bytes, len, tensors) == 0);
    const StTensor *m = &st.tensors[0];
    for (int i = 0; i < st.n; i++)
        if (!strncmp(st.tensors[i].name, tensor, strlen(tensor))) m = &st.tensors[i];
    CHECK(!strncmp(m->name, tensor, strlen(tensor)));
    corrupt(bytes, m);
    st_close(&st);
    CHECK(write_file_atomic(tensors, bytes, len) == 0);
    c.stop_after = 0;
    c.resume = true;
    CHECK(train_run(&c, NULL, &res) != 0);
    CHECK_MSG(strstr(peft_last_error(), where) && strstr(peft_last_error(), problem), "%s", peft_last_error());
    CHECK(!file_exists(adapter));
    train_config_free(&c);
    free(bytes);
    free(tensors);
    free(adapter);
    free(data);
    free(out);
}

static void put_nan(char *bytes, const StTensor *m) {
    (void)bytes;
    float nan = NAN;
    memcpy((void *)m->data, &nan, sizeof nan);
}

static void put_huge(char *bytes, const StTensor *m) {
    (void)bytes;
    float huge = FLT_MAX;
    memcpy((void *)m->data, &huge, sizeof huge);
}

// AdaLoRA's budget (init_bgt, target_bgt, allocator_ready) as the fuzzer left it.
static void put_budget(char *bytes, const StTensor *m) {
    (void)bytes;
    int32_t bgt[3] = {1916614592, -298044513, 1};
    memcpy((void *)m->data, bgt, sizeof bgt);
}

// The same bytes read as int32: "F32" -> "I32" in the tensor's header entry.
static void make_int32(char *bytes, const StTensor *m) {
    char *entry = xasprintf("\"%s\":{\"dtype\":\"F32\"", m->name), *at = strstr(bytes + 8, entry);
    if (at) at[strlen(entry) - 4] = 'I';
    free(entry);
}

// Resumed, a NaN AdamW moment went into the last step's update and the run saved an adapter of
// NaNs (shown by fuzz/fuzz_checkpoint.c's check of what a resumed run saves).
TEST(train_resume_refuses_non_finite_checkpoint) { check_bad_checkpoint(failed_, METHOD_LORA, "adam_m/", put_nan, "state.safetensors", "non-finite"); }
// The refusal of an int32 tensor did not name the file (found by fuzz/fuzz_checkpoint.c).
TEST(train_resume_refuses_int_checkpoint_tensor) {
    check_bad_checkpoint(failed_, METHOD_LORA, "adam_m/", make_int32, "state.safetensors", "not a float type");
}
// A finite but huge moment made the last step's update overflow, with no forward after it to see
// the result: the run saved an adapter with -inf (found by fuzz/fuzz_checkpoint.c).
TEST(train_refuses_to_save_non_finite_weights) { check_bad_checkpoint(failed_, METHOD_LORA, "adam_m/", put_huge, "step 3", "not finite"); }
// An AdaLoRA budget that is not the run's went into the schedule's int arithmetic, which overflowed
// (found by fuzz/fuzz_checkpoint.c).
TEST(train_resume_refuses_foreign_adalora_budget) {
    check_bad_checkpoint(failed_, METHOD_ADALORA, "adalora/budget", put_budget, "state.safetensors", "budget");
}

TEST(train_full_and_vera_save_loadable_outputs) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "d.csv", e2e_rows(0, 24)), *val = write_text(dir, "v.csv", e2e_rows(300, 8));
    MethodId methods[] = {METHOD_FULL, METHOD_VERA};
    for (int k = 0; k < 2; k++) {
        char *out = path_join(dir, k ? "vera" : "full");
        TrainConfig c = small_config(methods[k], data, out);
        c.val_path = val;
        c.max_steps = 3;
        if (k) c.adapter.r = 16;
        Record rec = {0};
        TrainResult res;
        CHECK(run(&c, &rec, &res) == 0 && res.steps_done == 3);
        EvalConfig ec = {.model_dir = k ? c.model_dir : out, .adapter_dir = k ? out : NULL, .data_path = val, .batch = 4, .threads = 1};
        ec.data.seq_len = 256;
        ec.data.no_cache = true;
        EvalInfo e;
        CHECK_MSG(eval_run(&ec, &e, NULL, NULL) == 0, "%s", peft_last_error());
        CHECK_NEAR(e.loss, res.last_val_loss, 1e-5);
        if (k) {  // VeRA adapters trained here leave the projections out of the file
            char *cfg = path_join(out, "adapter_config.json"), *text = read_file(cfg, NULL);
            cJSON *j = cJSON_Parse(text);
            CHECK(cJSON_IsFalse(cJSON_GetObjectItem(j, "save_projection")));
            cJSON_Delete(j);
            free(text);
            free(cfg);
        }
        train_config_free(&c);
        free(out);
    }
    free(data);
    free(val);
}

TEST(train_empty_dataset_is_an_error) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "empty.jsonl", xstrdup("\n")), *out = path_join(dir, "out");
    TrainConfig c = small_config(METHOD_LORA, data, out);
    TrainResult res;
    CHECK(train_run(&c, NULL, &res) != 0);
    CHECK_MSG(strstr(peft_last_error(), "empty.jsonl") && strstr(peft_last_error(), "empty"), "%s", peft_last_error());
    train_config_free(&c);
    free(data);
    free(out);
}

TEST(train_lr_schedules) {
    TrainConfig c;
    train_config_defaults(&c, METHOD_LORA);
    c.lr = 1.0f;
    c.warmup_steps = 2;
    CHECK_NEAR(train_lr_at(&c, 0, 10), 0.5, 1e-12);
    CHECK_NEAR(train_lr_at(&c, 1, 10), 1.0, 1e-12);
    CHECK_NEAR(train_lr_at(&c, 2, 10), 1.0, 1e-12);
    CHECK_NEAR(train_lr_at(&c, 6, 10), 0.5, 1e-12);
    c.schedule = SCHED_COSINE;
    CHECK_NEAR(train_lr_at(&c, 6, 10), 0.5, 1e-12);
    CHECK_NEAR(train_lr_at(&c, 4, 10), 0.5 * (1 + cos(M_PI * 0.25)), 1e-12);
    c.schedule = SCHED_CONSTANT;
    CHECK_NEAR(train_lr_at(&c, 9, 10), 1.0, 1e-12);
    train_config_free(&c);
}

// One step's weights (file `file` of out) with weight decay wd; the run is otherwise the same each time.
static int one_step(MethodId method, const char *data, const char *out, float wd, SafeTensors *st, const char *file) {
    TrainConfig c = small_config(method, data, out);
    c.max_steps = 1;
    c.data.seq_len = 64;
    c.lr = 1e-2f;
    c.schedule = SCHED_CONSTANT;
    c.weight_decay = wd;
    int rc = run(&c, &(Record){0}, &(TrainResult){0});
    train_config_free(&c);
    char *path = path_join(out, file);
    if (!rc && (rc = st_open(st, path))) fprintf(stderr, "  %s\n", peft_last_error());
    free(path);
    return rc;
}

// The weight-decay rule of HF Trainer's parameter groups: full fine-tuning decays the 2-D tensors
// (matrices, embeddings) and no bias or norm weight (the 1-D ones); an adapter's tensors all decay,
// VeRA's 1-D lambdas too (HF excludes by name: biases and norms). Decoupled decay makes the weights
// after one step with decay wd differ from those without by exactly -lr wd w0 for a decayed tensor,
// and not at all for the others (the gradient and Adam's update are the same).
TEST(train_weight_decay_groups) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "d.csv", e2e_rows(0, 8));
    const float lr = 1e-2f, wd = 0.5f;
    static const MethodId methods[] = {METHOD_FULL, METHOD_VERA};
    for (int k = 0; k < 2; k++) {
        bool full = methods[k] == METHOD_FULL;
        const char *file = full ? "model.safetensors" : "adapter_model.safetensors";
        char *out0 = path_join(dir, k ? "vera0" : "full0"), *out1 = path_join(dir, k ? "vera1" : "full1");
        char *base_path = path_join(test_tiny_model(), "model.safetensors");
        SafeTensors base = {0}, st0 = {0}, st1 = {0};
        CHECK(st_open(&base, base_path) == 0);
        CHECK(one_step(methods[k], data, out0, 0, &st0, file) == 0 && one_step(methods[k], data, out1, wd, &st1, file) == 0);
        int n_decayed = 0, n_kept = 0;
        for (int i = 0; i < st0.n; i++) {
            const StTensor *t0 = &st0.tensors[i], *t1 = st_find(&st1, t0->name);
            CHECK(t1 && t1->numel == t0->numel);
            long n = (long)t0->numel;
            // Before the step: the base model's tensor; VeRA's lambda_d starts at d_initial, lambda_b at 0.
            bool decays = full ? t0->ndim == 2 : true;
            float *w0 = xcalloc(n, sizeof(float)), *a = xmalloc(sizeof(float) * n), *b = xmalloc(sizeof(float) * n);
            const StTensor *tb = full ? st_find(&base, t0->name) : NULL;
            CHECK(!full || (tb && st_to_f32(tb, w0) == 0));
            if (!full && strstr(t0->name, "vera_lambda_d")) for (long j = 0; j < n; j++) w0[j] = 0.1f;
            CHECK(st_to_f32(t0, a) == 0 && st_to_f32(t1, b) == 0);
            double num = 0, den = 0, got = 0;  // squared norms: of (b - a) - want, of want, of b - a
            for (long j = 0; j < n; j++) {
                double want = decays ? -(double)lr * wd * w0[j] : 0.0, d = (double)b[j] - a[j];
                num += (d - want) * (d - want);
                den += want * want;
                got += d * d;
            }
            free(w0);
            free(a);
            free(b);
            // Decayed: the difference within fp32 rounding of w0 (|w0| 2^-24 against lr wd |w0| = 5e-3 |w0|).
            CHECK_MSG(decays ? sqrt(num) <= 1e-4 * sqrt(den) : num == 0, "%s (%d-D): weights with and without decay differ by %.3g (norm), want %.3g",
                      t0->name, t0->ndim, sqrt(got), sqrt(den));
            if (den > 0) n_decayed++;
            else n_kept += !decays;
        }
        CHECK_MSG(full ? n_decayed >= 4 && n_kept >= 8 : n_decayed == 2, "%d tensors decayed, %d 1-D ones kept", n_decayed, n_kept);
        st_close(&base);
        st_close(&st0);
        st_close(&st1);
        free(base_path);
        free(out0);
        free(out1);
    }
    free(data);
}

// ---------------------------------------------------------------------------------------------
// A checkpoint save killed at any stage (save_checkpoint: write checkpoint.new/, move checkpoint/
// to checkpoint.old/, move checkpoint.new/ into place, remove checkpoint.old/) leaves folders and
// ".tmp.<pid>" files behind; a resume must start from the last complete checkpoint and every later
// save must succeed.

static const char *const CKPT_FILES[] = {"state.json", "state.safetensors"};

static void remove_flat_dir(const char *dir) {  // a folder of files only
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            char *p = path_join(dir, e->d_name);
            unlink(p);
            free(p);
        }
    closedir(d);
    rmdir(dir);
}

// Copies src/NAME to dst/NAME for the n names.
static void copy_files(const char *src, const char *dst, const char *const *names, int n) {
    make_dir(dst);
    for (int i = 0; i < n; i++) {
        char *a = path_join(src, names[i]), *b = path_join(dst, names[i]);
        copy_file(a, b);
        free(a);
        free(b);
    }
}

static void plant_file(const char *dir, const char *name) {
    make_dir(dir);
    char *p = path_join(dir, name);
    write_file_atomic(p, "partial", 7);
    free(p);
}

static int checkpoint_step(const char *ckpt) {
    char *p = path_join(ckpt, "state.json"), *text = read_file(p, NULL);
    cJSON *j = cJSON_Parse(text ? text : "");
    const cJSON *s = cJSON_GetObjectItem(j, "step");
    int step = cJSON_IsNumber(s) ? (int)s->valuedouble : -1;
    cJSON_Delete(j);
    free(text);
    free(p);
    return step;
}

TEST(train_resume_after_a_killed_checkpoint_save) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "d.csv", e2e_rows(0, 16)), *out = path_join(dir, "out");
    char *ck = path_join(out, "checkpoint"), *ck_new = path_join(out, "checkpoint.new"), *ck_old = path_join(out, "checkpoint.old");
    char *ck2 = path_join(dir, "ck2"), *ck4 = path_join(dir, "ck4");
    TrainConfig c = small_config(METHOD_LORA, data, out);
    c.max_steps = 20;
    c.data.seq_len = 64;
    c.stop_after = 2;
    TrainResult res;
    Record rec = {0};
    CHECK(run(&c, &rec, &res) == 0 && res.stopped);
    copy_files(ck, ck2, CKPT_FILES, 2);
    c.resume = true;
    c.stop_after = 4;
    CHECK(run(&c, &rec, &res) == 0 && res.stopped);
    copy_files(ck, ck4, CKPT_FILES, 2);
    const char *stages[] = {"killed writing checkpoint.new's tensors", "killed writing checkpoint.new's state.json",
                            "killed between the two renames", "killed before removing checkpoint.old",
                            "killed while removing checkpoint.old", "a temporary file inside checkpoint/"};
    for (int s = 0; s < 6; s++) {
        remove_flat_dir(ck);
        remove_flat_dir(ck_new);
        remove_flat_dir(ck_old);
        switch (s) {
        case 0: copy_files(ck4, ck, CKPT_FILES, 2); plant_file(ck_new, "state.safetensors.tmp.99999"); break;
        case 1: copy_files(ck4, ck, CKPT_FILES, 2); copy_files(ck2, ck_new, CKPT_FILES + 1, 1); plant_file(ck_new, "state.json.tmp.99999"); break;
        case 2: copy_files(ck4, ck_old, CKPT_FILES, 2); copy_files(ck2, ck_new, CKPT_FILES, 2); break;
        case 3: copy_files(ck4, ck, CKPT_FILES, 2); copy_files(ck2, ck_old, CKPT_FILES, 2); break;
        case 4: copy_files(ck4, ck, CKPT_FILES, 2); copy_files(ck2, ck_old, CKPT_FILES + 1, 1); break;
        case 5: copy_files(ck4, ck, CKPT_FILES, 2); plant_file(ck, "state.safetensors.tmp.99999"); break;
        }
        // Resume, then save at every step: three saves go through every stage of the sequence.
        c.save_every = 1;
        c.stop_after = 7;
        Record r2 = {0};
        CHECK_MSG(run(&c, &r2, &res) == 0, "%s", stages[s]);
        CHECK_MSG(res.first_step == 4 && res.stopped && res.steps_done == 7, "%s: resumed at step %d", stages[s], res.first_step);
        CHECK_MSG(checkpoint_step(ck) == 7 && !dir_exists(ck_new) && !dir_exists(ck_old), "%s: leftovers", stages[s]);
    }
    // A file peft did not write is reported, not deleted.
    plant_file(ck_new, "notes.txt");
    CHECK(run(&c, &rec, &res) != 0);
    CHECK_MSG(strstr(peft_last_error(), "notes.txt"), "%s", peft_last_error());
    train_config_free(&c);
    free(data);
    free(out);
    free(ck);
    free(ck_new);
    free(ck_old);
    free(ck2);
    free(ck4);
}

// An output folder that holds another run's outputs is not replaced without `overwrite`, and a run
// whose final save fails leaves the previous adapter, log and curve as they were (together).
TEST(train_outputs_replaced_only_with_overwrite_and_together) {
    const char *dir = test_tmpdir();
    char *data = write_text(dir, "d.csv", e2e_rows(0, 16)), *out = path_join(dir, "out");
    const char *names[] = {"adapter_model.safetensors", "adapter_config.json", "train_log.jsonl", "loss.svg"};
    char *files[4], *before[4], *saved = path_join(dir, "saved");
    for (int i = 0; i < 4; i++) files[i] = path_join(out, names[i]);
    TrainConfig c = small_config(METHOD_LORA, data, out);
    c.max_steps = 2;
    c.data.seq_len = 64;
    TrainResult res;
    Record rec = {0};
    CHECK(run(&c, &rec, &res) == 0);
    copy_files(out, saved, names, 4);
    for (int i = 0; i < 4; i++) before[i] = path_join(saved, names[i]);
    c.lr = 1e-2f;  // a run whose log and adapter differ
    peft_clear_error();
    CHECK(train_run(&c, NULL, &res) != 0);
    CHECK_MSG(strstr(peft_last_error(), out) && strstr(peft_last_error(), "overwrite"), "%s", peft_last_error());
    // The final save fails (its temporary file cannot be created): the old outputs stay.
    c.overwrite = true;
    char *blocker = xasprintf("%s.tmp.%d", files[0], (int)getpid());
    make_dir(blocker);
    CHECK(train_run(&c, NULL, &res) != 0);
    for (int i = 0; i < 4; i++) CHECK_MSG(same_file(files[i], before[i]), "%s changed", names[i]);
    rmdir(blocker);
    CHECK(run(&c, &rec, &res) == 0);
    CHECK(!same_file(files[0], before[0]) && !same_file(files[2], before[2]));
    char *partial = path_join(out, "train_log.partial.jsonl");
    CHECK(!file_exists(partial));
    for (int i = 0; i < 4; i++) { free(files[i]); free(before[i]); }
    train_config_free(&c);
    free(partial);
    free(blocker);
    free(saved);
    free(data);
    free(out);
}
