// config.h: the architecture of a Hugging Face model folder, read from config.json.
// One struct covers GPT-2 and the Llama family (Llama, Mistral, Qwen2): the differences
// are flags (norm kind, biases, rope, sliding window), not separate code paths.
#pragma once
#include <stdbool.h>
#include <stdint.h>

typedef enum { ARCH_GPT2, ARCH_LLAMA, ARCH_BERT } Arch;  // LLAMA covers llama, mistral, qwen2; BERT: bert, roberta (encoders)
// An encoder's classification loss, as transformers picks it (config.problem_type, else from
// num_labels and the labels' dtype: PROBLEM_AUTO).
typedef enum { PROBLEM_AUTO, PROBLEM_SINGLE_LABEL, PROBLEM_MULTI_LABEL, PROBLEM_REGRESSION } ProblemType;
typedef enum { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 } RopeType;

typedef struct {
    Arch arch;
    char model_type[32];      // "gpt2", "llama", "mistral", "qwen2"
    int vocab_size;
    int n_layer;
    int n_embd;               // hidden size C
    int n_head;
    int n_kv_head;            // GPT-2: = n_head
    int head_dim;             // usually n_embd / n_head
    int n_inner;              // MLP hidden size
    int n_positions;          // max positions (GPT-2 learned positions; Llama rope limit)
    float norm_eps;
    bool tie_word_embeddings;
    bool qkv_bias;            // Qwen2 (and attention_bias=true Llamas)
    bool o_bias;              // attention_bias=true Llamas also bias o_proj
    bool mlp_bias;
    float rope_theta;
    RopeType rope_type;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    int sliding_window;       // 0 = full causal attention
    float dropout;            // the largest base-model dropout probability (not implemented: training refuses > 0)
    const char *dropout_key;  // its config.json key (a static string), NULL when none
    int bos_token_id, eos_token_id;
    // Encoders (ARCH_BERT): post-LayerNorm blocks, learned positions, token types, a sequence
    // classification head of num_labels outputs.
    int type_vocab_size;
    int pad_token_id;         // RoBERTa: positions count from pad_token_id + 1, padding sits at pad_token_id
    bool gelu_exact;          // hidden_act "gelu" (erf); false: the tanh approximation (gelu_new, gelu_pytorch_tanh)
    int num_labels;
    ProblemType problem_type;
} ModelConfig;

// Parses and validates; errors name the file and the field.
int config_load(ModelConfig *cfg, const char *path);
int config_parse(ModelConfig *cfg, const char *json_text, const char *path_for_errors);
// The sizes' checks config_parse ends with (also for configs made in code, e.g. by peft init):
// positive, consistent, and within limits far above any real model; sets head_dim when it is -1.
int config_validate(ModelConfig *cfg, const char *path_for_errors);
const char *config_arch_name(const ModelConfig *cfg);
// config.json text that transformers can load (malloc'd).
char *config_to_json(const ModelConfig *cfg);
