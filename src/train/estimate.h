// estimate.h: what a PEFT method costs on a model, without building it: trainable parameters,
// the adapter file's size, and the training memory on the CPU (this program, fp32) and on a GPU
// (bf16 mixed precision with flash attention), next to full fine-tuning's.
//
// The estimator works over a list of linear modules {name, in, out}. The list comes from a
// ModelConfig (GPT-2 / Llama family: exactly the modules model.c builds, enumerated without
// allocating, so 7B/13B shapes cost nothing) or from a named preset (including encoders and
// GPT-3, which model.c cannot build).
#pragma once
#include "adapter.h"
#include "config.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    char *name;      // HF module name, e.g. "transformer.h.0.attn.c_attn", "encoder.layer.0.attention.self.query"
    int in, out;
    bool bias;
    bool saved;      // an encoder's classification head: trained whole as modules_to_save (SEQ_CLS), never adapted
} EstLinear;

typedef enum { EST_DECODER_GPT2, EST_DECODER_LLAMA, EST_ENCODER_ROBERTA, EST_DECODER_GPT3 } EstFamily;

typedef struct {
    char name[128];           // preset name or the config.json path
    char description[160];    // e.g. "GPT2LMHeadModel", "RobertaModel (HF AutoModel, with pooler)"
    EstFamily family;
    ModelConfig cfg;          // shapes; for RoBERTa and GPT-3 the equivalent decoder-style fields
    bool lm_head;             // keeps logits [N,V] (false for the RoBERTa backbone)
    int max_context;          // longest usable sequence (RoBERTa: 512 = 514 positions - 2)
    int n_linears;
    EstLinear *linears;       // in model order
    int64_t n_params;         // every base parameter, tied embeddings counted once
} EstModel;

// The names est_model_preset accepts, NULL-terminated.
extern const char *const est_preset_names[];

// A preset (roberta-base, roberta-large, gpt2, gpt2-medium, gpt2-large, gpt3-175b, llama-2-7b,
// llama-2-13b, tinyllama-1.1b).
int est_model_preset(EstModel *em, const char *preset);
// From a parsed config (GPT-2 / Llama family): the module list model.c builds, in its order.
int est_model_from_config(EstModel *em, const ModelConfig *cfg, const char *name);
// A preset name, a config.json path, or an HF model folder holding config.json.
int est_model_load(EstModel *em, const char *spec);
void est_model_free(EstModel *em);

typedef struct {
    int64_t weights, grads, optimizer, activations;  // bytes
    int64_t workspace;  // scratch and library workspaces that are neither (GPU: cuBLASLt's, the upload's staging)
    int64_t total;
} EstMemory;

typedef struct {
    MethodId method;
    int r;                       // LoRA/VeRA r; AdaLoRA init_r
    int target_r;                // AdaLoRA
    int n_adapted;               // matched modules (all linears' count for full)
    int64_t base_params;
    int64_t trainable;           // adapter tensors (AdaLoRA at init_r), or every base parameter for full
    // VeRA: the shared frozen projections vera_A [r, max_in] and vera_B [max_out, r].
    int vera_max_in, vera_max_out;
    int64_t vera_projection;     // r*max_in + max_out*r
    // AdaLoRA: the final budget, target_r * n_adapted total ranks; the parameters and file bytes
    // when those ranks are spread evenly (target_r per module).
    int64_t adalora_budget_ranks;
    int64_t adalora_final_params;
    int64_t adalora_final_file_bytes;
    // adapter_model.safetensors, exactly as adapters_save writes it (fp32). VeRA: file_bytes follows
    // save_projection; file_bytes_with / _without give both. Full: model.safetensors data only (4 B/param).
    int64_t file_bytes;
    int64_t file_bytes_with_projection, file_bytes_without_projection;
    // Training memory, batch x context tokens.
    int batch, context;
    EstMemory cpu, gpu;            // this method
    EstMemory cpu_full, gpu_full;  // full fine-tuning of the same model, same batch
    // --quantize (estimate_quantize): the linears' quantized bytes (data and statistics) and their fp32 size.
    QuantType quant;
    bool double_quant;
    int64_t quant_bytes, quant_fp32_bytes;
} Estimate;

// c: the adapter options (type, r, init_r/target_r, targets, dropout, save_projection); ignored for
// full except dropout. Fails when the targets match no module.
int estimate_compute(Estimate *e, const EstModel *em, MethodId method, const AdapterConfig *c, int batch, int context);

// Both columns with the frozen linears quantized (--quantize; a method other than full; c: the adapter
// options estimate_compute had). CPU: their bytes as quant.c stores them (data, absmax or nested
// statistics, maps, SCB) in place of fp32, and one linear's dequantized fp32 weight (the largest) as
// workspace. GPU (gpu_quant.cu): the blocks' linears leave the bf16 arena (with the fused input
// gradient's spare rows); each one's codes (256-byte aligned) and fp32 scales (4-bit: an absmax per
// block, the double quantization undone on the host; int8: SCB per row; 64-float aligned) in their
// place, and one bf16 scratch for the largest group's dequantized weights (+ the spare rows) as workspace.
// A linear in modules_to_save is refused (as the model refuses a trained full copy of a quantized linear).
int estimate_quantize(Estimate *e, const EstModel *em, const AdapterConfig *c, QuantType t, bool nested);

// The GPU column with --recompute (gpu.h's GpuRecompute: 1 mlp, 2 layer; 0 changes nothing), for this
// method and for full fine-tuning (c: the adapter options estimate_compute had). mlp: the MLP
// pre-activations and activations of every layer give way to one pre-activation scratch; layer: of each
// block only its input (the residual stream) is kept, and one block's activations (the largest h of each
// group's place) serve every layer.
void estimate_recompute(Estimate *e, const EstModel *em, const AdapterConfig *c, int mode);

// Pieces, exposed for tests and the CLI.
// One tensor of a safetensors file, as st_writer sees it (fp32).
typedef struct {
    const char *name;
    int ndim;            // 1 or 2
    int64_t shape[2];
} EstTensor;
// The size st_writer_save gives a file of these tensors, in this order: 8 + the header JSON
// (cJSON_PrintUnformatted, "__metadata__" {"format":"pt"} first) padded to 8 + 4 bytes per value.
int64_t est_safetensors_bytes(const EstTensor *t, int n);
// CPU activation bytes model.c/transformer.c allocate for a forward+backward of [B,T] (no adapters).
int64_t est_cpu_activation_bytes(const EstModel *em, int B, int T);
// The CUDA backend's bf16 activation buffers for full fine-tuning of [B,T] (flash attention: no
// [T,T] scores; one classifier chunk of logits, not [N,V]).
int64_t est_gpu_activation_bytes(const EstModel *em, int B, int T);
