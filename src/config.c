#include "config.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cJSON *field(const cJSON *o, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return (f && !cJSON_IsNull(f)) ? f : NULL;
}

// Reads an integer field. Missing and no default (def < -1) is an error.
static int get_int(const cJSON *o, const char *name, int def, int *out, const char *path) {
    const cJSON *f = field(o, name);
    if (!f) {
        if (def < -1) return peft_fail("%s: missing field \"%s\"", path, name);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(f) || f->valuedouble != floor(f->valuedouble) || fabs(f->valuedouble) > 1e9)
        return peft_fail("%s: field \"%s\" must be an integer", path, name);
    *out = (int)f->valuedouble;
    return 0;
}

// A float field, finite once in float.
static int get_float(const cJSON *o, const char *name, float def, float *out, const char *path) {
    const cJSON *f = field(o, name);
    if (!f) { *out = def; return 0; }
    if (!cJSON_IsNumber(f) || !isfinite((float)f->valuedouble)) return peft_fail("%s: field \"%s\" must be a finite number", path, name);
    *out = (float)f->valuedouble;
    return 0;
}

static int get_bool(const cJSON *o, const char *name, bool def, bool *out, const char *path) {
    const cJSON *f = field(o, name);
    if (f && !cJSON_IsBool(f)) return peft_fail("%s: field \"%s\" must be true or false", path, name);
    *out = f ? cJSON_IsTrue(f) : def;
    return 0;
}

// A key the modeling code reads but this program does not implement: refused unless it holds the
// value that makes it a no-op (absent or null is fine).
static int want_value(const cJSON *j, const char *name, const char *no_op_json, const char *what, const char *path) {
    const cJSON *f = field(j, name);
    cJSON *want = cJSON_Parse(no_op_json);
    bool ok = !f || cJSON_Compare(f, want, true);
    cJSON_Delete(want);
    if (ok) return 0;
    char *text = cJSON_PrintUnformatted(f);
    int rc = peft_fail("%s: \"%s\": %.60s is not supported (%s; only %s is)", path, name, text, what, no_op_json);
    free(text);
    return rc;
}

// Base-model dropout is not implemented: inference ignores it (as transformers does in eval mode);
// peft train refuses a non-zero one (ModelConfig.dropout_key).
static int read_dropout(ModelConfig *c, const cJSON *j, const char *const *keys, const char *path) {
    for (int i = 0; keys[i]; i++) {
        float p = 0;
        if (get_float(j, keys[i], 0, &p, path)) return -1;
        if (p < 0 || p >= 1) return peft_fail("%s: %s %g must be in [0, 1)", path, keys[i], p);
        if (p > c->dropout) { c->dropout = p; c->dropout_key = keys[i]; }
    }
    return 0;
}

// GPT2Config's attribute_map: an alias in the file overrides the field it names.
static int check_alias(const cJSON *j, const char *alias, const char *name, int value, const char *path) {
    const cJSON *f = field(j, alias);
    if (f && !(cJSON_IsNumber(f) && f->valuedouble == value))
        return peft_fail("%s: \"%s\" disagrees with \"%s\" %d (transformers would take %s)", path, alias, name, value, alias);
    return 0;
}

static int parse_gpt2(ModelConfig *c, const cJSON *j, const char *path) {
    c->arch = ARCH_GPT2;
    if (get_int(j, "n_embd", -2, &c->n_embd, path) || get_int(j, "n_head", -2, &c->n_head, path) ||
        get_int(j, "n_layer", -2, &c->n_layer, path) || get_int(j, "n_positions", 1024, &c->n_positions, path) ||
        get_int(j, "n_inner", 0, &c->n_inner, path) || get_int(j, "vocab_size", -2, &c->vocab_size, path) ||
        get_float(j, "layer_norm_epsilon", 1e-5f, &c->norm_eps, path) ||
        get_int(j, "bos_token_id", 50256, &c->bos_token_id, path) || get_int(j, "eos_token_id", 50256, &c->eos_token_id, path) ||
        get_bool(j, "tie_word_embeddings", true, &c->tie_word_embeddings, path))
        return -1;
    if (c->n_inner == 0 && c->n_embd > 0 && c->n_embd <= INT_MAX / 4) c->n_inner = 4 * c->n_embd;  // else config_validate refuses n_embd
    c->n_kv_head = c->n_head;
    c->qkv_bias = c->o_bias = c->mlp_bias = true;
    const cJSON *act = field(j, "activation_function");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "gelu_new") && strcmp(act->valuestring, "gelu_pytorch_tanh"))))
        return peft_fail("%s: activation_function \"%s\" is not supported (gelu_new is)", path, cJSON_IsString(act) ? act->valuestring : "?");
    static const char *const dropouts[] = {"resid_pdrop", "embd_pdrop", "attn_pdrop", NULL};
    if (want_value(j, "scale_attn_by_inverse_layer_idx", "false", "it scales attention by the layer index", path) ||
        want_value(j, "reorder_and_upcast_attn", "false", "another attention computation", path) ||
        want_value(j, "scale_attn_weights", "true", "unscaled attention", path) ||
        check_alias(j, "hidden_size", "n_embd", c->n_embd, path) || check_alias(j, "num_attention_heads", "n_head", c->n_head, path) ||
        check_alias(j, "num_hidden_layers", "n_layer", c->n_layer, path) ||
        check_alias(j, "max_position_embeddings", "n_positions", c->n_positions, path) || read_dropout(c, j, dropouts, path))
        return -1;
    return 0;
}

// Rope settings: transformers 5 writes "rope_parameters"; older files "rope_theta" + "rope_scaling".
// Every key of them is known: an unknown one would be a rope variant this program does not have.
static int parse_rope(ModelConfig *c, const cJSON *j, const char *path) {
    const cJSON *rp = field(j, "rope_parameters");
    const cJSON *scaling = rp ? rp : field(j, "rope_scaling");
    const char *name = rp ? "rope_parameters" : "rope_scaling";
    if (get_float(rp ? rp : j, "rope_theta", 10000.0f, &c->rope_theta, path)) return -1;
    if (rp && !field(rp, "rope_theta") && get_float(j, "rope_theta", 10000.0f, &c->rope_theta, path)) return -1;
    if (!(c->rope_theta > 0)) return peft_fail("%s: rope_theta must be positive", path);
    if (want_value(j, "partial_rotary_factor", "1", "rope on part of each head", path)) return -1;
    c->rope_type = ROPE_DEFAULT;
    if (!scaling) return 0;
    if (!cJSON_IsObject(scaling)) return peft_fail("%s: %s must be an object", path, name);
    static const char *const known[] = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings", "partial_rotary_factor", NULL};
    const cJSON *e;
    cJSON_ArrayForEach(e, scaling) {
        int k = 0;
        while (known[k] && strcmp(known[k], e->string)) k++;
        if (!known[k]) return peft_fail("%s: %s.%s is not supported (an unknown rope setting)", path, name, e->string);
    }
    if (want_value(scaling, "partial_rotary_factor", "1", "rope on part of each head", path)) return -1;
    const cJSON *type = field(scaling, "rope_type");
    if (!type) type = field(scaling, "type");
    const char *t = (type && cJSON_IsString(type)) ? type->valuestring : "default";
    if (!strcmp(t, "default")) return 0;
    if (!strcmp(t, "linear")) c->rope_type = ROPE_LINEAR;
    else if (!strcmp(t, "llama3")) c->rope_type = ROPE_LLAMA3;
    else return peft_fail("%s: %s type \"%s\" is not supported (default, linear, llama3 are)", path, name, t);
    if (get_float(scaling, "factor", 1.0f, &c->rope_factor, path) ||
        get_float(scaling, "low_freq_factor", 1.0f, &c->rope_low_freq_factor, path) ||
        get_float(scaling, "high_freq_factor", 4.0f, &c->rope_high_freq_factor, path) ||
        get_int(scaling, "original_max_position_embeddings", 8192, &c->rope_original_max_pos, path))
        return -1;
    if (c->rope_factor <= 0) return peft_fail("%s: %s factor must be positive", path, name);
    if (c->rope_type == ROPE_LLAMA3 && !(c->rope_high_freq_factor > c->rope_low_freq_factor && c->rope_low_freq_factor > 0 && c->rope_original_max_pos > 0))
        return peft_fail("%s: %s: llama3 needs 0 < low_freq_factor < high_freq_factor and a positive original_max_position_embeddings", path, name);
    return 0;
}

// The sliding window as transformers applies it: Mistral on every layer; Qwen2 (with
// use_sliding_window) on the layers layer_types marks "sliding_attention", by default those from
// max_window_layers on; Llama never. This program has one window for all layers, so a model whose
// layers differ is refused, as is a layer_types that disagrees with the window.
static int read_sliding_window(ModelConfig *c, const cJSON *j, const char *path) {
    bool qwen2 = !strcmp(c->model_type, "qwen2"), mistral = !strcmp(c->model_type, "mistral"), use;
    int window = 0, max_window_layers = 28;
    if (get_int(j, "sliding_window", 0, &window, path) || get_int(j, "max_window_layers", 28, &max_window_layers, path) ||
        get_bool(j, "use_sliding_window", false, &use, path))
        return -1;
    if (window < 0) return peft_fail("%s: sliding_window must be positive", path);
    if (!qwen2 && !mistral && window) return peft_fail("%s: sliding_window: transformers' Llama does not use it (Mistral and Qwen2 do)", path);
    if (qwen2 && !use) window = 0;
    const cJSON *types = field(j, "layer_types");
    if (types && (!cJSON_IsArray(types) || cJSON_GetArraySize(types) != c->n_layer))
        return peft_fail("%s: layer_types must list the %d layers' attention", path, c->n_layer);
    // Without layer_types the sliding layers are Qwen2's from max_window_layers on, or every Mistral
    // layer (counted, not looped over: n_layer is not checked yet).
    int first = qwen2 && max_window_layers > 0 ? max_window_layers : 0;
    int n_sliding = window && !types && first < c->n_layer ? c->n_layer - first : 0;
    const cJSON *t;
    int l = 0;
    cJSON_ArrayForEach(t, types) {  // as many entries as layers
        if (!(cJSON_IsString(t) && (!strcmp(t->valuestring, "full_attention") || !strcmp(t->valuestring, "sliding_attention"))))
            return peft_fail("%s: layer_types[%d] is not \"full_attention\" or \"sliding_attention\"", path, l);
        bool sliding = !strcmp(t->valuestring, "sliding_attention");
        if (!qwen2 && sliding != (window > 0))
            return peft_fail("%s: layer_types[%d] \"%s\" disagrees with sliding_window %d", path, l, t->valuestring, window);
        n_sliding += sliding && window > 0;
        l++;
    }
    if (n_sliding && n_sliding < c->n_layer)
        return peft_fail("%s: a sliding window on %d of the %d layers (max_window_layers / layer_types) is not supported: only on all or none",
                         path, n_sliding, c->n_layer);
    c->sliding_window = n_sliding ? window : 0;
    return 0;
}

static int parse_llama(ModelConfig *c, const cJSON *j, const char *path) {
    c->arch = ARCH_LLAMA;
    bool qwen2 = !strcmp(c->model_type, "qwen2"), attention_bias;
    if (get_int(j, "hidden_size", -2, &c->n_embd, path) || get_int(j, "num_attention_heads", -2, &c->n_head, path) ||
        get_int(j, "num_hidden_layers", -2, &c->n_layer, path) || get_int(j, "intermediate_size", -2, &c->n_inner, path) ||
        get_int(j, "vocab_size", -2, &c->vocab_size, path) || get_int(j, "num_key_value_heads", -1, &c->n_kv_head, path) ||
        get_int(j, "max_position_embeddings", 2048, &c->n_positions, path) || get_int(j, "head_dim", -1, &c->head_dim, path) ||
        get_float(j, "rms_norm_eps", 1e-6f, &c->norm_eps, path) ||
        get_int(j, "bos_token_id", 1, &c->bos_token_id, path) || get_int(j, "eos_token_id", 2, &c->eos_token_id, path) ||
        get_bool(j, "tie_word_embeddings", false, &c->tie_word_embeddings, path) ||
        get_bool(j, "attention_bias", false, &attention_bias, path) || get_bool(j, "mlp_bias", false, &c->mlp_bias, path))
        return -1;
    if (c->n_kv_head == -1) c->n_kv_head = c->n_head;
    c->qkv_bias = qwen2 || attention_bias;  // Qwen2: q/k/v biases always, no other
    c->o_bias = !qwen2 && attention_bias;
    if (qwen2) c->mlp_bias = false;
    const cJSON *act = field(j, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return peft_fail("%s: hidden_act \"%s\" is not supported (silu is)", path, cJSON_IsString(act) ? act->valuestring : "?");
    static const char *const dropouts[] = {"attention_dropout", NULL};
    if (read_dropout(c, j, dropouts, path) || read_sliding_window(c, j, path)) return -1;
    return parse_rope(c, j, path);
}

// BERT and RoBERTa (transformers' BertConfig / RobertaConfig and PretrainedConfig's keys). Every key
// of the file is one of these: read, metadata that changes nothing computed here, or refused unless
// it holds its no-op value; any other key is refused by name.
static const char *const BERT_INERT_KEYS[] = {
    "model_type", "architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path", "initializer_range",
    "use_cache", "gradient_checkpointing", "output_attentions", "output_hidden_states", "return_dict", "label2id",
    "finetuning_task", "tokenizer_class", "attn_implementation", "tie_word_embeddings", "sep_token_id", "cls_token_id",
    "id2label", NULL};
static const char *const BERT_USED_KEYS[] = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "max_position_embeddings",
    "type_vocab_size", "layer_norm_eps", "pad_token_id", "num_labels", "problem_type", "position_embedding_type",
    "is_decoder", "add_cross_attention", "chunk_size_feed_forward", "bos_token_id", "eos_token_id", NULL};

static bool in_list(const char *const *list, const char *s) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(list[i], s)) return true;
    return false;
}

static int parse_bert(ModelConfig *c, const cJSON *j, const char *path) {
    c->arch = ARCH_BERT;
    bool roberta = !strcmp(c->model_type, "roberta");
    const cJSON *e;
    cJSON_ArrayForEach(e, j)
        if (!in_list(BERT_USED_KEYS, e->string) && !in_list(BERT_INERT_KEYS, e->string))
            return peft_fail("%s: key \"%s\" is not supported for %s (refused rather than ignored: it may change what the model computes)",
                             path, e->string, c->model_type);
    if (get_int(j, "hidden_size", -2, &c->n_embd, path) || get_int(j, "num_attention_heads", -2, &c->n_head, path) ||
        get_int(j, "num_hidden_layers", -2, &c->n_layer, path) || get_int(j, "intermediate_size", -2, &c->n_inner, path) ||
        get_int(j, "vocab_size", -2, &c->vocab_size, path) || get_int(j, "max_position_embeddings", 512, &c->n_positions, path) ||
        get_int(j, "type_vocab_size", 2, &c->type_vocab_size, path) || get_float(j, "layer_norm_eps", 1e-12f, &c->norm_eps, path) ||
        get_int(j, "pad_token_id", roberta ? 1 : 0, &c->pad_token_id, path) ||
        get_int(j, "bos_token_id", roberta ? 0 : -1, &c->bos_token_id, path) || get_int(j, "eos_token_id", roberta ? 2 : -1, &c->eos_token_id, path))
        return -1;
    c->n_kv_head = c->n_head;
    c->qkv_bias = c->o_bias = c->mlp_bias = true;
    // num_labels: the key (transformers' constructor argument), else id2label's size, else 2.
    const cJSON *id2label = field(j, "id2label");
    if (id2label && !cJSON_IsObject(id2label)) return peft_fail("%s: id2label must be an object", path);
    if (get_int(j, "num_labels", id2label ? cJSON_GetArraySize(id2label) : 2, &c->num_labels, path)) return -1;
    if (c->num_labels < 1 || c->num_labels > 1 << 16) return peft_fail("%s: num_labels %d must be in [1, 65536]", path, c->num_labels);
    if (id2label && cJSON_GetArraySize(id2label) != c->num_labels)
        return peft_fail("%s: id2label has %d labels but num_labels is %d", path, cJSON_GetArraySize(id2label), c->num_labels);
    const cJSON *pt = field(j, "problem_type");
    static const char *const problems[] = {"single_label_classification", "multi_label_classification", "regression", NULL};
    if (pt && !(cJSON_IsString(pt) && in_list(problems, pt->valuestring)))
        return peft_fail("%s: problem_type must be one of single_label_classification, multi_label_classification, regression", path);
    c->problem_type = !pt ? PROBLEM_AUTO : !strcmp(pt->valuestring, problems[0]) ? PROBLEM_SINGLE_LABEL
                    : !strcmp(pt->valuestring, problems[1]) ? PROBLEM_MULTI_LABEL : PROBLEM_REGRESSION;
    // transformers' ACT2FN: "gelu" is the exact (erf) GELU, "gelu_new" / "gelu_pytorch_tanh" the tanh one.
    const cJSON *act = field(j, "hidden_act");
    const char *a = act && cJSON_IsString(act) ? act->valuestring : act ? "?" : "gelu";
    if (strcmp(a, "gelu") && strcmp(a, "gelu_new") && strcmp(a, "gelu_pytorch_tanh"))
        return peft_fail("%s: hidden_act \"%s\" is not supported (gelu, gelu_new, gelu_pytorch_tanh are)", path, a);
    c->gelu_exact = !strcmp(a, "gelu");
    static const char *const dropouts[] = {"hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", NULL};
    if (want_value(j, "position_embedding_type", "\"absolute\"", "relative position embeddings", path) ||
        want_value(j, "is_decoder", "false", "causal attention", path) ||
        want_value(j, "add_cross_attention", "false", "cross-attention to an encoder", path) ||
        want_value(j, "chunk_size_feed_forward", "0", "a chunked feed-forward (the same numbers, not implemented)", path) ||
        read_dropout(c, j, dropouts, path))
        return -1;
    // RoBERTa's positions start after the padding index: max_position_embeddings counts it.
    if (roberta && c->n_positions <= c->pad_token_id + 1)
        return peft_fail("%s: max_position_embeddings %d leaves no position after pad_token_id %d", path, c->n_positions, c->pad_token_id);
    if (c->type_vocab_size <= 0 || c->type_vocab_size > 1 << 16) return peft_fail("%s: type_vocab_size %d must be in [1, 65536]", path, c->type_vocab_size);
    return 0;
}

// Far above any released model (about 100 layers, hidden sizes near 16K, vocabularies near 256K,
// contexts of a few million), and low enough that every width model.c derives from them fits an
// int and no config.json asks for an absurd allocation before a weight is read.
enum { MAX_LAYERS = 1 << 16, MAX_WIDTH = 1 << 20, MAX_VOCAB = 1 << 24, MAX_POSITIONS = 1 << 24 };

static int check_size(const char *path, const char *name, int64_t value, int64_t max) {
    if (value <= 0) return peft_fail("%s: %s must be positive (got %lld)", path, name, (long long)value);
    if (value > max) return peft_fail("%s: %s %lld is out of range (at most %lld)", path, name, (long long)value, (long long)max);
    return 0;
}

int config_validate(ModelConfig *c, const char *path) {
    bool gpt2 = c->arch == ARCH_GPT2;
    if (check_size(path, gpt2 ? "n_layer" : "num_hidden_layers", c->n_layer, MAX_LAYERS) ||
        check_size(path, gpt2 ? "n_embd" : "hidden_size", c->n_embd, MAX_WIDTH) ||
        check_size(path, gpt2 ? "n_head" : "num_attention_heads", c->n_head, MAX_WIDTH) ||
        check_size(path, gpt2 ? "n_inner" : "intermediate_size", c->n_inner, MAX_WIDTH) ||
        check_size(path, "vocab_size", c->vocab_size, MAX_VOCAB) ||
        check_size(path, gpt2 ? "n_positions" : "max_position_embeddings", c->n_positions, MAX_POSITIONS))
        return -1;
    if (c->head_dim == -1) {
        if (c->n_embd % c->n_head) return peft_fail("%s: hidden size %d is not divisible by the number of heads %d", path, c->n_embd, c->n_head);
        c->head_dim = c->n_embd / c->n_head;
    }
    if (c->head_dim <= 0 || c->head_dim % 2) return peft_fail("%s: head_dim %d must be positive and even", path, c->head_dim);
    if (c->n_kv_head <= 0 || c->n_head % c->n_kv_head)
        return peft_fail("%s: num_attention_heads %d is not divisible by num_key_value_heads %d", path, c->n_head, c->n_kv_head);
    if ((int64_t)c->n_head * c->head_dim > MAX_WIDTH)
        return peft_fail("%s: %d heads of head_dim %d are %lld wide (at most %d)", path, c->n_head, c->head_dim,
                         (long long)c->n_head * c->head_dim, MAX_WIDTH);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps)) return peft_fail("%s: norm epsilon must be positive and finite", path);
    return 0;
}

int config_parse(ModelConfig *c, const char *text, const char *path) {
    memset(c, 0, sizeof *c);
    c->head_dim = -1;
    cJSON *j = cJSON_Parse(text);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return peft_fail("%s: not a JSON object", path);
    }
    int rc = 0;
    const cJSON *mt = field(j, "model_type");
    if (!mt || !cJSON_IsString(mt)) {
        rc = peft_fail("%s: missing field \"model_type\"", path);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);
    if (!strcmp(mt->valuestring, "gpt2")) rc = parse_gpt2(c, j, path);
    else if (!strcmp(mt->valuestring, "llama") || !strcmp(mt->valuestring, "mistral") || !strcmp(mt->valuestring, "qwen2"))
        rc = parse_llama(c, j, path);
    else if (!strcmp(mt->valuestring, "bert") || !strcmp(mt->valuestring, "roberta")) rc = parse_bert(c, j, path);
    else rc = peft_fail("%s: model_type \"%s\" is not supported (gpt2, llama, mistral, qwen2, bert, roberta are; DeBERTa is not)", path, mt->valuestring);
    if (rc) goto done;

    rc = config_validate(c, path);
done:
    cJSON_Delete(j);
    return rc;
}

int config_load(ModelConfig *c, const char *path) {
    char *text = read_file(path, NULL);
    if (!text) return -1;
    int rc = config_parse(c, text, path);
    free(text);
    return rc;
}

const char *config_arch_name(const ModelConfig *c) {
    if (c->arch == ARCH_GPT2) return "GPT2LMHeadModel";
    if (c->arch == ARCH_BERT) return strcmp(c->model_type, "roberta") ? "BertForSequenceClassification" : "RobertaForSequenceClassification";
    if (!strcmp(c->model_type, "mistral")) return "MistralForCausalLM";
    if (!strcmp(c->model_type, "qwen2")) return "Qwen2ForCausalLM";
    return "LlamaForCausalLM";
}

char *config_to_json(const ModelConfig *c) {
    cJSON *j = cJSON_CreateObject();
    const char *arch = config_arch_name(c);
    cJSON_AddItemToObject(j, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddStringToObject(j, "model_type", c->model_type);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    if (c->bos_token_id >= 0) cJSON_AddNumberToObject(j, "bos_token_id", c->bos_token_id);  // a tokenizer may have none
    else cJSON_AddNullToObject(j, "bos_token_id");
    if (c->eos_token_id >= 0) cJSON_AddNumberToObject(j, "eos_token_id", c->eos_token_id);
    else cJSON_AddNullToObject(j, "eos_token_id");
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddStringToObject(j, "dtype", "float32");
    if (c->arch == ARCH_GPT2) {
        cJSON_AddNumberToObject(j, "n_embd", c->n_embd);
        cJSON_AddNumberToObject(j, "n_head", c->n_head);
        cJSON_AddNumberToObject(j, "n_layer", c->n_layer);
        cJSON_AddNumberToObject(j, "n_positions", c->n_positions);
        cJSON_AddNumberToObject(j, "n_inner", c->n_inner);
        cJSON_AddNumberToObject(j, "layer_norm_epsilon", c->norm_eps);
        cJSON_AddStringToObject(j, "activation_function", "gelu_new");
        cJSON_AddNumberToObject(j, "resid_pdrop", 0);
        cJSON_AddNumberToObject(j, "embd_pdrop", 0);
        cJSON_AddNumberToObject(j, "attn_pdrop", 0);
    } else if (c->arch == ARCH_BERT) {
        static const char *const problems[] = {NULL, "single_label_classification", "multi_label_classification", "regression"};
        cJSON_AddNumberToObject(j, "hidden_size", c->n_embd);
        cJSON_AddNumberToObject(j, "num_attention_heads", c->n_head);
        cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layer);
        cJSON_AddNumberToObject(j, "intermediate_size", c->n_inner);
        cJSON_AddNumberToObject(j, "max_position_embeddings", c->n_positions);
        cJSON_AddNumberToObject(j, "type_vocab_size", c->type_vocab_size);
        cJSON_AddNumberToObject(j, "layer_norm_eps", c->norm_eps);
        cJSON_AddNumberToObject(j, "pad_token_id", c->pad_token_id);
        cJSON_AddStringToObject(j, "hidden_act", c->gelu_exact ? "gelu" : "gelu_new");
        cJSON_AddNumberToObject(j, "num_labels", c->num_labels);
        if (c->problem_type) cJSON_AddStringToObject(j, "problem_type", problems[c->problem_type]);
        cJSON_AddNumberToObject(j, "hidden_dropout_prob", 0);
        cJSON_AddNumberToObject(j, "attention_probs_dropout_prob", 0);
    } else {
        cJSON_AddNumberToObject(j, "hidden_size", c->n_embd);
        cJSON_AddNumberToObject(j, "num_attention_heads", c->n_head);
        cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_head);
        cJSON_AddNumberToObject(j, "head_dim", c->head_dim);
        cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layer);
        cJSON_AddNumberToObject(j, "intermediate_size", c->n_inner);
        cJSON_AddNumberToObject(j, "max_position_embeddings", c->n_positions);
        cJSON_AddNumberToObject(j, "rms_norm_eps", c->norm_eps);
        cJSON_AddStringToObject(j, "hidden_act", "silu");
        cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);
        cJSON_AddBoolToObject(j, "attention_bias", c->qkv_bias && strcmp(c->model_type, "qwen2"));
        cJSON_AddBoolToObject(j, "mlp_bias", c->mlp_bias);
        if (c->sliding_window) cJSON_AddNumberToObject(j, "sliding_window", c->sliding_window);
        if (c->sliding_window && !strcmp(c->model_type, "qwen2")) cJSON_AddBoolToObject(j, "use_sliding_window", true);
    }
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    return text;
}
