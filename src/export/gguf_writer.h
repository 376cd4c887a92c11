// gguf_writer.h: writing GGUF files, the model format of ggml (llama.cpp, Ollama, LM Studio), as
// ggml's docs/gguf.md specifies version 3, little-endian:
//   "GGUF", u32 version 3, u64 tensor count, u64 metadata count,
//   metadata: key (u64 length + bytes), u32 value type, value (strings: u64 length + bytes;
//             arrays: u32 element type, u64 count, the elements),
//   tensor infos: name (a string, at most 63 bytes), u32 dims, u64 ne[dims] (ne[0] varies fastest),
//             u32 ggml type, u64 offset of its data from the start of the data section,
//   zero padding to the alignment, then each tensor's data, each padded to the alignment.
// The file is written to a temporary name and renamed when complete.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// Metadata value types (gguf_metadata_value_type).
typedef enum {
    GGUF_U8 = 0, GGUF_I8 = 1, GGUF_U16 = 2, GGUF_I16 = 3, GGUF_U32 = 4, GGUF_I32 = 5, GGUF_F32 = 6,
    GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_U64 = 10, GGUF_I64 = 11, GGUF_F64 = 12,
} GgufType;

// The tensor types this writer produces (ggml_type).
typedef enum { GGML_F32 = 0, GGML_F16 = 1, GGML_Q8_0 = 8, GGML_BF16 = 30 } GgmlType;

enum { GGUF_DEFAULT_ALIGNMENT = 32, GGUF_MAX_NAME = 63, GGUF_MAX_DIMS = 4, GGUF_Q8_0_BLOCK = 32 };

typedef struct GgufWriter GgufWriter;

// alignment: GGUF_DEFAULT_ALIGNMENT, or another power of two that is a multiple of 8 (then written
// as general.alignment, the first metadata entry).
GgufWriter *gguf_writer_new(uint32_t alignment);
void gguf_writer_free(GgufWriter *w);

// Metadata, written in the order added. Keys are ASCII letters, digits, '_' and '.'. A bad or
// repeated key, or any other misuse, is remembered and reported by gguf_writer_save (which then
// writes nothing).
// A scalar of a numeric type or GGUF_BOOL; value points to the matching C type (bool for GGUF_BOOL).
void gguf_put(GgufWriter *w, const char *key, GgufType type, const void *value);
void gguf_put_u32(GgufWriter *w, const char *key, uint32_t v);
void gguf_put_f32(GgufWriter *w, const char *key, float v);
void gguf_put_bool(GgufWriter *w, const char *key, bool v);
// A string of len bytes (GGUF strings are not NUL-terminated; UTF-8 by convention).
void gguf_put_str(GgufWriter *w, const char *key, const char *s, size_t len);
void gguf_put_cstr(GgufWriter *w, const char *key, const char *s);
// An array of n numeric or bool values (values: n elements of the matching C type).
void gguf_put_array(GgufWriter *w, const char *key, GgufType type, const void *values, uint64_t n);
// An array of n strings; lens NULL means NUL-terminated.
void gguf_put_str_array(GgufWriter *w, const char *key, const char *const *s, const size_t *lens, uint64_t n);

// A tensor of n_dims (1..4) dimensions ne[] (ne[0] varies fastest: a row-major [rows, cols] matrix
// is ne = {cols, rows}). data holds its float32 values in that order and is converted to `type`
// when the file is written (Q8_0 needs ne[0] to be a multiple of 32). The writer keeps the pointer
// (the caller keeps data alive until gguf_writer_save) or, when owned, takes it (free() at
// gguf_writer_free). Names are unique, at most 63 bytes.
void gguf_add_tensor(GgufWriter *w, const char *name, GgmlType type, int n_dims, const int64_t *ne, const float *data, bool owned);
int gguf_writer_n_tensors(const GgufWriter *w);

// Writes the file (temporary name, then rename). A value that the tensor's type cannot hold (beyond
// float16's range for F16 and Q8_0's scale) is an error naming the tensor, and nothing is written.
int gguf_writer_save(GgufWriter *w, const char *path);

// The conversions, as ggml defines them: float16 and bfloat16 round to nearest, ties to even;
// Q8_0 cuts n values (a multiple of 32) into blocks of 32, each stored as its scale
// d = max|x| / 127 (float16) and 32 int8 values roundf(x / d) (ties away from zero; 0 when d is 0),
// 34 bytes a block.
uint16_t gguf_f32_to_f16(float x);
uint16_t gguf_f32_to_bf16(float x);
void gguf_quantize_q8_0(const float *x, uint8_t *out, int64_t n);
// Bytes n values (n a multiple of the type's block) take.
uint64_t ggml_type_bytes(GgmlType type, int64_t n);
const char *ggml_type_name(GgmlType type);
