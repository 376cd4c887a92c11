// dump_logits MODEL_DIR [ADAPTER_DIR|-] OUT.safetensors: our logits for fixed token ids, so another
// implementation (HF transformers + PEFT, tools/interop/check_peft.py) can be compared with them.
#include "adapter.h"
#include "model.h"
#include "safetensors.h"
#include "util.h"
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: dump_logits MODEL_DIR ADAPTER_DIR|- OUT.safetensors\n"); return 2; }
    Model *m = model_load(argv[1]);
    if (!m || (strcmp(argv[2], "-") && adapters_load(m, argv[2]))) { fprintf(stderr, "%s\n", peft_last_error()); return 1; }
    enum { B = 2, T = 12 };
    int32_t ids[B * T];
    int64_t ids64[B * T];
    for (int i = 0; i < B * T; i++) ids64[i] = ids[i] = (i * 37 + 11) % m->cfg.vocab_size;
    model_forward(m, ids, NULL, B, T);
    StWriter *w = st_writer_new();
    int64_t shape_ids[2] = {B, T}, shape_logits[3] = {B, T, m->cfg.vocab_size};
    st_writer_add(w, "input_ids", DT_I64, 2, shape_ids, ids64);
    st_writer_add_f32(w, "logits", 3, shape_logits, m->act.logits);
    int rc = st_writer_save(w, argv[3]);
    st_writer_free(w);
    model_free(m);
    if (rc) fprintf(stderr, "%s\n", peft_last_error());
    return rc ? 1 : 0;
}
