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

static int get_float(const cJSON *o, const char *name, float def, float *out, const char *path) {
    const cJSON *f = field(o, name);
    if (!f) { *out = def; return 0; }
    if (!cJSON_IsNumber(f)) return peft_fail("%s: field \"%s\" must be a number", path, name);
    *out = (float)f->valuedouble;
    return 0;
}

static bool get_bool(const cJSON *o, const char *name, bool def) {
    const cJSON *f = field(o, name);
    return f ? cJSON_IsTrue(f) : def;
}

static int parse_gpt2(ModelConfig *c, const cJSON *j, const char *path) {
    c->arch = ARCH_GPT2;
    if (get_int(j, "n_embd", -2, &c->n_embd, path) || get_int(j, "n_head", -2, &c->n_head, path) ||
        get_int(j, "n_layer", -2, &c->n_layer, path) || get_int(j, "n_positions", 1024, &c->n_positions, path) ||
        get_int(j, "n_inner", 0, &c->n_inner, path) || get_int(j, "vocab_size", -2, &c->vocab_size, path) ||
        get_float(j, "layer_norm_epsilon", 1e-5f, &c->norm_eps, path) ||
        get_int(j, "bos_token_id", 50256, &c->bos_token_id, path) || get_int(j, "eos_token_id", 50256, &c->eos_token_id, path))
        return -1;
    if (c->n_inner == 0 && c->n_embd > 0 && c->n_embd <= INT_MAX / 4) c->n_inner = 4 * c->n_embd;  // else config_validate refuses n_embd
    c->n_kv_head = c->n_head;
    c->tie_word_embeddings = get_bool(j, "tie_word_embeddings", true);
    c->qkv_bias = c->o_bias = c->mlp_bias = true;
    const cJSON *act = field(j, "activation_function");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "gelu_new") && strcmp(act->valuestring, "gelu_pytorch_tanh"))))
        return peft_fail("%s: activation_function \"%s\" is not supported (gelu_new is)", path, cJSON_IsString(act) ? act->valuestring : "?");
    if (get_bool(j, "scale_attn_by_inverse_layer_idx", false) || get_bool(j, "reorder_and_upcast_attn", false))
        return peft_fail("%s: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported", path);
    if (!get_bool(j, "scale_attn_weights", true)) return peft_fail("%s: scale_attn_weights=false is not supported", path);
    return 0;
}

// Rope settings: transformers 5 writes "rope_parameters"; older files "rope_theta" + "rope_scaling".
static int parse_rope(ModelConfig *c, const cJSON *j, const char *path) {
    const cJSON *rp = field(j, "rope_parameters");
    const cJSON *scaling = rp ? rp : field(j, "rope_scaling");
    if (get_float(rp ? rp : j, "rope_theta", 10000.0f, &c->rope_theta, path)) return -1;
    if (rp && !field(rp, "rope_theta") && get_float(j, "rope_theta", 10000.0f, &c->rope_theta, path)) return -1;
    c->rope_type = ROPE_DEFAULT;
    if (!scaling) return 0;
    if (!cJSON_IsObject(scaling)) return peft_fail("%s: rope_scaling must be an object", path);
    const cJSON *type = field(scaling, "rope_type");
    if (!type) type = field(scaling, "type");
    const char *t = (type && cJSON_IsString(type)) ? type->valuestring : "default";
    if (!strcmp(t, "default")) return 0;
    if (!strcmp(t, "linear")) c->rope_type = ROPE_LINEAR;
    else if (!strcmp(t, "llama3")) c->rope_type = ROPE_LLAMA3;
    else return peft_fail("%s: rope_scaling type \"%s\" is not supported (default, linear, llama3 are)", path, t);
    if (get_float(scaling, "factor", 1.0f, &c->rope_factor, path) ||
        get_float(scaling, "low_freq_factor", 1.0f, &c->rope_low_freq_factor, path) ||
        get_float(scaling, "high_freq_factor", 4.0f, &c->rope_high_freq_factor, path) ||
        get_int(scaling, "original_max_position_embeddings", 8192, &c->rope_original_max_pos, path))
        return -1;
    if (c->rope_factor <= 0) return peft_fail("%s: rope_scaling factor must be positive", path);
    return 0;
}

static int parse_llama(ModelConfig *c, const cJSON *j, const char *path) {
    c->arch = ARCH_LLAMA;
    if (get_int(j, "hidden_size", -2, &c->n_embd, path) || get_int(j, "num_attention_heads", -2, &c->n_head, path) ||
        get_int(j, "num_hidden_layers", -2, &c->n_layer, path) || get_int(j, "intermediate_size", -2, &c->n_inner, path) ||
        get_int(j, "vocab_size", -2, &c->vocab_size, path) || get_int(j, "num_key_value_heads", -1, &c->n_kv_head, path) ||
        get_int(j, "max_position_embeddings", 2048, &c->n_positions, path) || get_int(j, "head_dim", -1, &c->head_dim, path) ||
        get_float(j, "rms_norm_eps", 1e-6f, &c->norm_eps, path) ||
        get_int(j, "bos_token_id", 1, &c->bos_token_id, path) || get_int(j, "eos_token_id", 2, &c->eos_token_id, path))
        return -1;
    if (c->n_kv_head == -1) c->n_kv_head = c->n_head;
    c->tie_word_embeddings = get_bool(j, "tie_word_embeddings", false);
    bool qwen2 = !strcmp(c->model_type, "qwen2");
    c->qkv_bias = qwen2 || get_bool(j, "attention_bias", false);
    c->o_bias = !qwen2 && get_bool(j, "attention_bias", false);
    c->mlp_bias = get_bool(j, "mlp_bias", false);
    const cJSON *act = field(j, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu")))
        return peft_fail("%s: hidden_act \"%s\" is not supported (silu is)", path, cJSON_IsString(act) ? act->valuestring : "?");
    // Mistral and Qwen2 may set a sliding window; Qwen2 only applies it with use_sliding_window.
    int window = 0;
    if (get_int(j, "sliding_window", 0, &window, path)) return -1;
    if (qwen2 && !get_bool(j, "use_sliding_window", false)) window = 0;
    if (window < 0) return peft_fail("%s: sliding_window must be positive", path);
    c->sliding_window = window;
    return parse_rope(c, j, path);
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
    else rc = peft_fail("%s: model_type \"%s\" is not supported (gpt2, llama, mistral, qwen2 are)", path, mt->valuestring);
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
    cJSON_AddNumberToObject(j, "bos_token_id", c->bos_token_id);
    cJSON_AddNumberToObject(j, "eos_token_id", c->eos_token_id);
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
