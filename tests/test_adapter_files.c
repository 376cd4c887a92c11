// Adapter folders that lie: sizes in adapter_config.json that the tensors do not hold (checked
// against the file before anything is allocated: r 1e9 used to abort the process), and tensors
// that nothing uses (refused by name rather than ignored).
#include "test.h"
#include "helpers.h"
#include "adapter.h"
#include "safetensors.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

// A saved adapter of the given type on the tiny GPT-2's c_attn and c_fc (r 4; AdaLoRA init_r 4).
static char *saved_adapter(Model *m, MethodId type) {
    AdapterConfig c;
    adapter_config_defaults(&c, type);
    c.r = c.init_r = 4;
    c.target_r = 2;
    adapter_config_set_targets(&c, "c_attn,c_fc");
    char *dir = path_join(test_tmpdir(), "adapter");
    int rc = adapters_attach(m, &c, 1);
    adapter_config_free(&c);
    if (rc || adapters_save(m, dir)) { fprintf(stderr, "  %s\n", peft_last_error()); abort(); }
    adapters_free(m);
    return dir;
}

// Adds an fp32 tensor of n zeros to adapter_model.safetensors.
static void add_tensor(const char *dir, const char *name, int n) {
    char *path = path_join(dir, "adapter_model.safetensors");
    SafeTensors st;
    if (st_open(&st, path)) abort();
    StWriter *w = st_writer_new();
    for (int i = 0; i < st.n; i++) st_writer_add(w, st.tensors[i].name, st.tensors[i].dtype, st.tensors[i].ndim, st.tensors[i].shape, st.tensors[i].data);
    float *zeros = xcalloc(n, sizeof(float));
    int64_t shape[1] = {n};
    st_writer_add_f32(w, name, 1, shape, zeros);
    st_close(&st);
    if (st_writer_save(w, path)) abort();
    st_writer_free(w);
    free(zeros);
    free(path);
}

// Loading dir fails with an error holding both strings; the model is left without an adapter.
static bool refused(Model *m, const char *dir, const char *a, const char *b) {
    peft_clear_error();
    AdapterSet *set = adapters_load_detached(m, dir);
    if (set) { adapter_set_free(set); fprintf(stderr, "  %s: loaded\n", dir); return false; }
    bool ok = strstr(peft_last_error(), a) && strstr(peft_last_error(), b) && !m->adapters;
    if (!ok) fprintf(stderr, "  error: %s\n", peft_last_error());
    return ok;
}

TEST(adapter_sizes_are_checked_against_the_file_before_allocating) {
    Model *m = test_model_from_json(TINY_GPT2_JSON, 1);
    static const struct { MethodId type; const char *key, *tensor; } cases[] = {
        {METHOD_LORA, "r", "c_attn.lora_A.weight"},
        {METHOD_VERA, "r", "c_attn.vera_lambda_d"},
        {METHOD_ADALORA, "init_r", "c_attn.lora_A"},
    };
    for (int i = 0; i < 3; i++) {
        char *dir = saved_adapter(m, cases[i].type);
        test_set_adapter_key(dir, cases[i].key, "1000000000");
        CHECK(refused(m, dir, "adapter_model.safetensors", cases[i].tensor));
        CHECK_MSG(strstr(peft_last_error(), "1000000000"), "%s", peft_last_error());
        free(dir);
    }
    // A fresh adapter as large: refused before its allocation is tried.
    AdapterConfig c;
    adapter_config_defaults(&c, METHOD_LORA);
    c.r = 1000000000;
    adapter_config_set_targets(&c, "c_attn");
    peft_clear_error();
    CHECK(adapters_attach(m, &c, 1) != 0 && !m->adapters);
    CHECK_MSG(strstr(peft_last_error(), "memory"), "%s", peft_last_error());
    adapter_config_free(&c);
    model_free(m);
}

TEST(adapter_tensors_nothing_uses_are_refused) {
    Model *m = test_model_from_json(TINY_GPT2_JSON, 1);
    // modules_to_save's copy of a module, an embedding LoRA, a module the config does not target.
    const char *extra[] = {"base_model.model.lm_head.weight", "base_model.model.transformer.wte.lora_embedding_A",
                           "base_model.model.transformer.h.0.attn.c_proj.lora_A.weight"};
    for (int i = 0; i < 3; i++) {
        char *dir = saved_adapter(m, METHOD_LORA);
        add_tensor(dir, extra[i], 16);
        CHECK(refused(m, dir, extra[i], "not used"));
        free(dir);
    }
    // VeRA: stored projections are used only with save_projection.
    char *dir = saved_adapter(m, METHOD_VERA);
    AdapterSet *set = adapters_load_detached(m, dir);
    CHECK_MSG(set, "%s", peft_last_error());
    adapter_set_free(set);
    test_set_adapter_key(dir, "save_projection", "false");
    CHECK(refused(m, dir, "base_model.vera_A", "not used"));
    free(dir);
    model_free(m);
}
