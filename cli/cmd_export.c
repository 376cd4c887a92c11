// peft export --model DIR [--adapter DIR] [--merge] --to gguf --out FILE [--type f32|f16|bf16|q8_0]:
// the model (without --adapter, or with the adapter merged) or the adapter alone as a GGUF file for
// llama.cpp, Ollama and LM Studio (docs/gguf.md).
#include "peft.h"
#include "cli.h"
#include <stdio.h>
#include <string.h>

int cmd_export(int argc, char **argv) {
    const char *model_dir = NULL, *adapter_dir = NULL, *to = NULL, *out = NULL, *type_name = "f32";
    bool merge = false;
    Option opts[] = {
        {"model", OPT_STRING, &model_dir, "HF model folder (config.json, safetensors, tokenizer)"},
        {"adapter", OPT_STRING, &adapter_dir, "PEFT adapter folder: exported as a llama.cpp LoRA adapter, or merged with --merge"},
        {"merge", OPT_FLAG, &merge, "merge the adapter into the weights and export the whole model"},
        {"to", OPT_STRING, &to, "the format: gguf"},
        {"out", OPT_STRING, &out, "the file to write"},
        {"type", OPT_STRING, &type_name, "f32 (default), f16, bf16 or q8_0: how 2-D weights are stored"},
    };
    if (parse_options("export", argc, argv, opts, sizeof opts / sizeof *opts, NULL, 0, NULL)) return 2;
    if (!model_dir || !to || !out) { fprintf(stderr, "peft export: --model, --to and --out are required\n"); return 2; }
    if (strcmp(to, "gguf")) { fprintf(stderr, "peft export: --to %s is not a format it writes (gguf is)\n", to); return 2; }
    if (merge && !adapter_dir) { fprintf(stderr, "peft export: --merge needs --adapter\n"); return 2; }
    GgufOutType type;
    if (gguf_out_type_parse(type_name, &type)) { fprintf(stderr, "peft export: --type: %s\n", peft_last_error()); return 2; }
    Model *m = model_load(model_dir);
    if (!m || (adapter_dir && adapters_load(m, adapter_dir))) { model_free(m); return fail_with_library_error(); }
    if (m->quant) {  // GGUF gets the dequantized weights (llama.cpp's own types via --type)
        printf("dequantized the %s base for the export\n", quant_type_name(m->quant));
        model_dequantize(m);
    }
    if (merge) adapters_merge(m);
    bool adapter_only = adapter_dir && !merge;
    int rc = adapter_only ? gguf_export_adapter(m, adapter_dir, type, out) : gguf_export_model(m, type, out);
    if (!rc) {
        printf("wrote %s: %s for llama.cpp's %s architecture (%s)\n", out,
               adapter_only ? "a LoRA adapter" : merge ? "the model with the adapter merged" : "the model", gguf_arch(&m->cfg), type_name);
        if (!adapter_only && gguf_context_length(&m->cfg) < m->cfg.n_positions)
            printf("note: context length %d, the sliding window: llama.cpp's %s architecture attends to the whole context, so within the window is where it computes as %s does\n",
                   gguf_context_length(&m->cfg), gguf_arch(&m->cfg), m->cfg.model_type);
    }
    model_free(m);
    return rc ? fail_with_library_error() : 0;
}
