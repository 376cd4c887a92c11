// peft.h: the library's public interface, the one header the CLI (cli/) includes. What is public is
// what these headers declare: a model and its tokenizer, the method table and adapters on a model,
// data, training and its estimates, generation and scoring, the server, GGUF export, quantized bases,
// the reference cases, the CUDA backend's entry points, and util.h's errors and files. Headers not
// listed here (tokenizer_internal.h, data_internal.h, jinja_internal.h, kernels.h, ...) are the
// library's own; tests may use them, the CLI does not.
#pragma once

#include "util.h"
#include "version.h"
#include "config.h"
#include "model.h"
#include "json_bytes.h"

#include "tokenizer.h"
#include "byte_tokenizer.h"
#include "jinja.h"
#include "data.h"

#include "method.h"
#include "adapter.h"
#include "lora_init.h"
#include "lora_combine.h"

#include "train.h"
#include "progress.h"
#include "estimate.h"
#include "check.h"
#include "classify.h"

#include "generate.h"
#include "metrics.h"
#include "serve.h"

#include "quant.h"
#include "gguf_export.h"
#include "cuda/gpu.h"
