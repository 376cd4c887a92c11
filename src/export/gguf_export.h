// gguf_export.h: a model, or an adapter on it, as the GGUF files llama.cpp and Ollama load, named
// and laid out as llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py) write
// them. docs/gguf.md says what is exported how, and what is refused.
#pragma once
#include "model.h"

typedef enum { GGUF_OUT_F32, GGUF_OUT_F16, GGUF_OUT_BF16, GGUF_OUT_Q8_0 } GgufOutType;

// "f32", "f16", "bf16", "q8_0".
int gguf_out_type_parse(const char *s, GgufOutType *out);

// llama.cpp's architecture for the model: "gpt2", "llama" (Llama and Mistral) or "qwen2"; NULL with
// an error naming what llama.cpp lacks for this configuration.
const char *gguf_arch(const ModelConfig *cfg);

// The context length a model exported now gets: its max positions, or the sliding window when
// that is shorter (llama.cpp's llama and qwen2 attend to the whole context, so within the window
// is where the two compute the same).
int gguf_context_length(const ModelConfig *cfg);

// The whole model: its weights as they are now (an adapter merged into them included), the
// architecture's metadata, and the tokenizer and chat template of its folder (m->dir).
// 2-D weights are stored as `type` (Q8_0 where rows are a multiple of 32 values, F16 otherwise),
// norms, biases and position embeddings as F32. Nothing is written on error.
int gguf_export_model(const Model *m, GgufOutType type, const char *path);

// m's adapters (loaded, not merged) as a llama.cpp LoRA adapter: each module's delta as lora_a /
// lora_b, with whatever scale llama.cpp does not apply itself (it applies alpha / rank, rank read
// from each lora_b) folded into lora_b. LoRA (rsLoRA too), AdaLoRA and VeRA are all low-rank
// products; a module whose AdaLoRA ranks were all pruned is left out. adapter_dir names it.
int gguf_export_adapter(const Model *m, const char *adapter_dir, GgufOutType type, const char *path);
