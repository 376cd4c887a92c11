// method.h: the fine-tuning methods, one descriptor each, in one table indexed by MethodId.
// lora.c, vera.c, adalora.c and dora.c each define their descriptor (full fine-tuning's is in method.c):
// its name, the adapter_config.json keys it reads, its defaults, its tensors, its CPU ops, the GPU
// kernels that run it and its checkpoint state. Everything that names, lists, configures, runs,
// estimates or checkpoints a method goes through the table; an id that is not in it is an error.
// Adding a method: one file with its descriptor, an id below and its row in method.c's table.
#pragma once
#include "model.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { METHOD_LORA, METHOD_VERA, METHOD_ADALORA, METHOD_FULL, METHOD_DORA, METHOD_COUNT } MethodId;

typedef struct AdapterSet AdapterSet;
typedef struct Method Method;
struct GpuModel;

// A tensor a method gives every adapted module, as PEFT names and shapes it: its file key is
// "base_model.model.<module>.<suffix>", its shape [rows, cols] in terms of the module's rank and
// features (vector: a 1-D tensor [rows]).
typedef enum { DIM_ONE, DIM_RANK, DIM_IN, DIM_OUT } AdapterDim;
typedef struct {
    const char *suffix;
    AdapterDim rows, cols;
    bool vector;
    size_t field;            // offsetof(Adapter, the Param * it fills)
} AdapterTensor;
// A dimension's size for a module of rank r with these features.
int64_t adapter_dim(AdapterDim d, int64_t r, int64_t in, int64_t out);
// One module's tensor elements at rank r (its trainable parameters).
int64_t method_module_params(const Method *m, int64_t r, int64_t in, int64_t out);

// An adapter_config.json key a method reads, and what this program does with it. PEFT drops a key
// its config class does not have with a warning (a config from a newer PEFT); here such a key is
// refused by name, since it may change what the adapter computes.
typedef enum {
    KEY_USED,     // read and implemented
    KEY_INERT,    // changes nothing the adapter computes: metadata, or read only along with a refused key
    KEY_DEFAULT,  // not implemented: refused unless it holds PEFT's default
} KeyUse;
typedef struct {
    const char *key;
    KeyUse use;
    const char *accepted;  // a JSON array of the values allowed; NULL: any (KEY_DEFAULT: null, false, "", {} or [])
    const char *what;      // KEY_DEFAULT: what a value would do (said when refusing it)
} ConfigKey;

// How the CUDA backend runs a method's modules (src/cuda: gpu_model.cu's training kernels and
// gpu_infer.cu's per-row adapters): a LoRA product, AdaLoRA's with E between, VeRA's shared
// projections with per-module scaling vectors, or DoRA's LoRA product with its rescale (gpu_dora.cu;
// the training kernels only: gpu_infer_supports says which kinds cached inference applies per row).
typedef enum { AD_NONE, AD_LORA, AD_ADALORA, AD_VERA, AD_DORA } GpuKind;

struct Method {
    MethodId id;
    const char *name;            // the CLI's --method, reference cases' and checkpoints' "method"
    const char *title;           // for people: "LoRA", "full fine-tuning"
    const char *peft_type;       // adapter_config.json's peft_type; NULL: not an adapter (full)
    int default_r;
    float default_lr;            // peft train's learning rate when none is given
    // The adapter_config.json keys of this method's config class; base: a config class it extends
    // (AdaLoRA's is LoRA's), whose keys it reads too unless it lists them itself. The keys every
    // method shares are adapter_config.c's.
    const Method *config_base;
    // A variant of config_base's method, written as its peft_type with this key true (DoRA: LoRA's
    // "use_dora"): a file of that peft_type with the key true loads as this method; NULL: none.
    const char *variant_key;
    int n_keys;
    const ConfigKey *keys;
    GpuKind gpu;                 // AD_NONE: not on the CUDA backend (full fine-tuning needs no adapter kernels)

    // ---- CPU ops (adapter methods only) ----
    int n_tensors;
    AdapterTensor tensors[3];    // every adapted module's tensors, in the order they are created and saved
    // Called once before the per-module init (e.g. VeRA draws its shared projections).
    int (*prepare)(AdapterSet *set);
    // Set this module's initial values (its tensors exist already) and scaling.
    int (*init)(AdapterSet *set, Adapter *a, uint64_t *rng);
    // y[N,out] += adapter(x[N,in]). train: apply dropout and keep what backward needs.
    void (*forward)(Adapter *a, const float *x, float *y, int N, bool train);
    // dx[N,in] += d/dx; accumulate the adapter tensors' gradients.
    void (*backward)(Adapter *a, const float *x, const float *dy, float *dx, int N);
    // delta[out,in] = the weight change the adapter adds (for merge).
    void (*delta)(const Adapter *a, float *delta);
    // The same delta as a plain low-rank product, delta = scale * B'[out,r'] A'[r',in], every other
    // factor folded into A' and B' (malloc'd; NULL when r' is 0): for formats that only know LoRA.
    void (*lowrank)(const Adapter *a, float **A, float **B, int *r, float *scale);
    // Serving rows of many adapter sets (adapter.c's mixed rows): true: forward runs on this module's
    // rows gathered (DoRA rescales the rows' whole base result); false: the rows get the method's
    // product (LoRA and AdaLoRA's low-rank product, VeRA's shared projections).
    bool rows_by_forward;
    // Optional: a loss term over all modules (AdaLoRA's orthogonality); adds its gradient when want_grad.
    double (*regularizer)(AdapterSet *set, bool want_grad);
    // Optional: write method-specific config keys and tensors when saving (AdaLoRA slicing, VeRA projections).
    int (*save)(AdapterSet *set, void *writer /*StWriter*/, void *config_json /*cJSON*/);
    // Optional: after loading tensors from a file (VeRA checks stored projections).
    int (*after_load)(AdapterSet *set, const void *file /*SafeTensors*/, const char *path);
    // Optional: whether a file tensor that is no module's is this method's (VeRA's stored projections);
    // any other such tensor is refused.
    bool (*owns_tensor)(const AdapterSet *set, const char *name);
    void (*free_state)(AdapterSet *set);
    // Optional: after each optimizer step at `step` (0-based), before the gradients are zeroed
    // (AdaLoRA's rank allocator): returns the method's budget (and sets *mask_applied), or -1.
    int (*after_step)(Model *m, int step, int *mask_applied);
    // The same for the CUDA trainer, with the method's state on the device (required with after_step).
    int (*after_step_gpu)(Model *m, struct GpuModel *g, int step, int *mask_applied);
    // Optional: that device state copied into the host's (down, before save_state) or back (after load_state).
    int (*sync_state_gpu)(AdapterSet *set, struct GpuModel *g, bool down);
    // Optional: the training state a checkpoint keeps beyond tensors and optimizer (AdaLoRA's
    // allocator scores and rank pattern), written into and read back from the checkpoint's file.
    void (*save_state)(AdapterSet *set, void *writer /*StWriter*/);
    int (*load_state)(AdapterSet *set, const void *file /*SafeTensors*/, const char *path);
};

extern const Method lora_method, vera_method, adalora_method, full_method, dora_method;

// The method with this id; NULL (and peft_last_error) when there is none.
const Method *method_get(MethodId id);
// By name, in any case (lora, LoRA); an unknown name is an error listing the methods.
int method_parse(const char *name, MethodId *out);
// By adapter_config.json's peft_type, in any case (LORA; never a variant); -1 without an error when none has it.
int method_from_peft_type(const char *peft_type, MethodId *out);
// The name, or "?" for an id that is not a method.
const char *method_name(MethodId id);
// A list of the methods for messages and help, written into buf (returned): sep between the items,
// last before the last one. LIST_NAMES: every method's name ("lora, vera, adalora or full");
// LIST_TITLES, LIST_PEFT_TYPES: the adapter methods' ("LoRA, VeRA, AdaLoRA"; "LORA, VERA, ADALORA": a
// variant's peft_type is its base's, listed once).
typedef enum { LIST_NAMES, LIST_TITLES, LIST_PEFT_TYPES } MethodList;
const char *method_names(char *buf, size_t cap, const char *sep, const char *last, MethodList what);
