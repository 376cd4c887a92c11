// peft quantize --model DIR --to nf4|fp4|int8 [--no-double-quant] --out DIR: the model with its linears
// quantized as bitsandbytes does, saved as transformers saves such a model (from_pretrained loads it).
#include "cli.h"
#include "peft.h"
#include <stdio.h>

int cmd_quantize(int argc, char **argv) {
    const char *model_dir = NULL, *to = NULL, *out = NULL;
    bool no_double_quant = false;
    Option opts[] = {
        {"model", OPT_STRING, &model_dir, "HF model folder (fp32, fp16 or bf16 weights)"},
        {"to", OPT_STRING, &to, "nf4 | fp4 (4-bit, blocks of 64) | int8 (LLM.int8() rows)"},
        {"no-double-quant", OPT_FLAG, &no_double_quant, "4-bit: keep the fp32 block statistics (default: quantized again to 8 bits)"},
        {"out", OPT_STRING, &out, "folder for the quantized model"},
    };
    if (parse_options("quantize", argc, argv, opts, 4, NULL, 0, NULL)) return 2;
    if (!model_dir || !to || !out) { fprintf(stderr, "peft quantize: --model, --to and --out are required\n"); return 2; }
    int qt;
    bool nested;
    if (quant_resolve("quantize", to, no_double_quant, &qt, &nested)) return 2;
    Model *m = model_load_quantized(model_dir, qt, nested);
    if (!m) return fail_with_library_error();
    size_t bytes = 0, fp32 = 0;
    for (int i = 0; i < m->n_linears; i++) {
        bytes += qweight_bytes(m->linears[i].q);
        fp32 += sizeof(float) * (size_t)m->linears[i].in * m->linears[i].out;
    }
    int rc = model_save(m, out);
    int n = m->n_linears;
    model_free(m);
    if (rc) return fail_with_library_error();
    printf("quantized %d linears to %s%s: %.2f MiB (%.2f MiB in fp32), saved in %s\n", n, to, nested ? " with double quantization" : "",
           bytes / 1048576.0, fp32 / 1048576.0, out);
    return 0;
}
