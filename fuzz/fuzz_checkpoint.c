// fuzz_checkpoint.c: a training checkpoint as `peft train --resume` reads it. The input is
// checkpoint/state.json, a NUL byte, then checkpoint/state.safetensors; state.json's "method"
// picks the run it belongs to (a tiny GPT-2, 3 steps of 2 sequences from a fixed text). The run
// resumes and finishes, saving weights of finite values, or refuses the checkpoint with an
// error naming it (or its loss or an update overflows, which the training reports).
#include "fuzz.h"
#include "safetensors.h"
#include "train.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// The run a checkpoint belongs to, writing into fuzz_dir()/out (emptied first).
static TrainConfig run_config(const char *method) {
    static const char *model_dir, *data_path;
    if (!model_dir) {
        static const char text[] = "A checkpoint holds the trainable tensors, the AdamW moments and the step; "
                                   "a resumed run continues exactly as the uninterrupted one would have.\n";
        model_dir = fuzz_model_dir("checkpoint-model", FUZZ_GPT2_CONFIG);
        data_path = fuzz_write("checkpoint-data", "data.txt", text, strlen(text));
    }
    MethodId m = METHOD_LORA;
    if (method_parse(method, &m)) peft_clear_error();  // the run refuses the checkpoint's method
    TrainConfig c;
    train_config_defaults(&c, m);
    c.model_dir = model_dir;
    c.data_path = data_path;
    c.out_dir = fuzz_clear("out");
    c.data.seq_len = 16;
    c.batch = 2;
    c.max_steps = 3;
    c.threads = 1;
    c.adapter.r = 2;
    c.adapter.init_r = 2;
    c.adapter.target_r = 1;
    c.adapter.tinit = c.adapter.tfinal = 1;
    return c;
}

static void free_config(TrainConfig *c) {
    free((char *)c->out_dir);
    train_config_free(c);
}

// What a resumed run saved (an adapter, or with full fine-tuning a model) holds only finite values:
// a checkpoint never turns into broken weights.
static void check_finite_output(const TrainConfig *c) {
    char *path = path_join(c->out_dir, c->method == METHOD_FULL ? "model.safetensors" : "adapter_model.safetensors");
    SafeTensors st;
    FUZZ_CHECK(st_open(&st, path) == 0, "%s", peft_last_error());
    for (int i = 0; i < st.n; i++) {
        const StTensor *t = &st.tensors[i];
        if (t->dtype != DT_F32) continue;
        float *x = xmalloc(sizeof(float) * (t->numel ? t->numel : 1));
        FUZZ_CHECK(st_to_f32(t, x) == 0, "%s", peft_last_error());
        for (long k = 0; k < t->numel; k++) FUZZ_CHECK(isfinite(x[k]), "the resumed run saved %s with %g at %ld", t->name, x[k], k);
        free(x);
    }
    st_close(&st);
    free(path);
}

int fuzz_checkpoint_seed(const char *method, uint8_t **data, size_t *size) {
    TrainConfig c = run_config(method);
    c.stop_after = 1;
    TrainResult res;
    char *state = path_join(c.out_dir, "checkpoint/state.json"), *tensors = path_join(c.out_dir, "checkpoint/state.safetensors");
    int rc = train_run(&c, NULL, &res) || fuzz_join_files(state, tensors, data, size) ? -1 : 0;
    free(state);
    free(tensors);
    free_config(&c);
    return rc;
}

int fuzz_checkpoint(const uint8_t *data, size_t size) {
    const uint8_t *rest;
    size_t n;
    char *state = fuzz_split(data, size, &rest, &n);
    cJSON *j = cJSON_Parse(state);
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(j, "method");
    TrainConfig c = run_config(cJSON_IsString(method) ? method->valuestring : "lora");
    cJSON_Delete(j);
    c.resume = true;
    free(fuzz_write("out/checkpoint", "state.json", state, strlen(state)));
    free(fuzz_write("out/checkpoint", "state.safetensors", rest ? rest : (const uint8_t *)"", n));
    free(state);
    TrainResult res;
    int ok = train_run(&c, NULL, &res) == 0;
    // Values that make the loss or an update overflow are the training's to report; anything else in
    // the checkpoint is named.
    FUZZ_CHECK(ok || strstr(peft_last_error(), "checkpoint") || strstr(peft_last_error(), "not finite"),
               "the message does not name the checkpoint: %s", peft_last_error());
    if (ok) {
        FUZZ_CHECK(res.steps_done == res.total_steps && res.first_step <= res.total_steps, "resumed at %d, ended at %d of %d",
                   res.first_step, res.steps_done, res.total_steps);
        check_finite_output(&c);
    }
    free_config(&c);
    return ok;
}
