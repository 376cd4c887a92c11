// quant_files.h: bitsandbytes-quantized model folders as transformers saves them (quant_files.c).
#pragma once
#include "quant.h"
#include "safetensors.h"

// config.json's quantization_config (a parsed cJSON object of the whole file): *type QUANT_NONE when
// there is none. Every key is implemented or refused by name; quant_method must be bitsandbytes.
int quant_config_read(const void *config_json, QuantType *type, bool *double_quant, const char *path);
// The quantization_config object transformers writes for this quantization (a cJSON *).
void *quant_config_json(QuantType t, bool nested);
// One quantized linear "<module>" of [rows = out, cols = in] from the folder's tensors (4-bit: the
// packed weight and its statistics, the quant_state JSON checked key by key; 8-bit: weight, SCB,
// weight_format). Any other "<module>.weight.*" tensor is refused by name.
int quant_read_linear(QWeight *q, const StModel *st, const char *module, QuantType t, int64_t rows, int64_t cols, const char *dir);
// Its tensors as transformers saves them.
void quant_write_linear(StWriter *w, const char *module, const QWeight *q);
