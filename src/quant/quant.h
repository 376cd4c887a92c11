// quant.h: bitsandbytes' quantization of frozen weights, computed as its CUDA kernels compute it
// (csrc/kernels.cu: kQuantizeBlockwise, dQuantizeNF4 / dQuantizeFP4, dQuantize, kDequantizeBlockwise)
// so that bytes and statistics are bit-identical to what that source specifies:
//   4-bit NF4 / FP4: blocks of 64 values, each scaled by the reciprocal of its fp32 absmax and coded
//     by the kernel's decision thresholds; two codes a byte, the first value in the high nibble;
//   double quantization of the 4-bit absmax: its mean taken out (offset), then 8-bit blockwise
//     quantization (blocks of 256) with the signed dynamic map;
//   LLM.int8(): each row scaled to [-127, 127] by its absmax (the SCB statistic), rounded to int8.
// A weight is quantized in nn.Linear's layout [out, in] (transformers transposes GPT-2's Conv1D first).
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { QUANT_NONE, QUANT_NF4, QUANT_FP4, QUANT_INT8 } QuantType;
enum { QUANT_BLOCK = 64, QUANT_NESTED_BLOCK = 256 };

const char *quant_type_name(QuantType t);            // "none", "nf4", "fp4", "int8"
int quant_type_parse(const char *s, QuantType *t);   // error names the value

// The 16 code values of a 4-bit type as bitsandbytes' get_4bit_type lists them (the quant_map it saves).
void quant_4bit_map(QuantType t, float map[16]);
// The signed 8-bit dynamic map of create_dynamic_map(), each torch.linspace evaluated by its
// element formula (start + step * i in the first half, end - step * (steps - 1 - i) after), in fp32.
void quant_dynamic_map(float map[256]);

// One value already scaled into [-1, 1]: its code, by the kernels' decision trees / binary search.
uint8_t quant_nf4_code(float x);
uint8_t quant_fp4_code(float x);
uint8_t quant_8bit_code(const float map[256], float x);
// A code's value times absmax, with the kernels' operation order.
float quant_nf4_value(uint8_t code, float absmax);
float quant_fp4_value(uint8_t code, float absmax);

// x[n] in blocks of `block`: absmax[ceil(n / block)], codes out[(n + 1) / 2] (4-bit) or out[n] (8-bit).
void quant_4bit(QuantType t, const float *x, long n, int block, uint8_t *out, float *absmax);
void quant_8bit(const float map[256], const float *x, long n, int block, uint8_t *out, float *absmax);
// Values [first, first + count) of a quantized tensor.
void dequant_4bit(QuantType t, const uint8_t *q, const float *absmax, int block, long first, long count, float *out);
void dequant_8bit(const float map[256], const uint8_t *q, const float *absmax, int block, long n, float *out);
// The mean double quantization takes out: fp32 mean of x[n], exact sum, rounded once.
float quant_mean(const float *x, long n);

// bitsandbytes dequantizes into the weight's original dtype: fp32 products rounded to it.
typedef enum { QUANT_OUT_F32, QUANT_OUT_BF16, QUANT_OUT_F16 } QuantOut;
// x[n] rounded to that dtype (to nearest, ties to even, as the kernels' conversions and torch's .to())
// and kept in fp32; QUANT_OUT_F32 leaves them.
void quant_round(QuantOut d, float *x, long n);

// A quantized weight matrix [rows, cols] in bitsandbytes' storage.
typedef struct {
    QuantType type;
    int64_t rows, cols;
    uint8_t *data;            // 4-bit: (rows * cols + 1) / 2 bytes; int8: rows * cols (int8_t)
    int block;                // 4-bit block size (64)
    long n_blocks;
    float map[16];            // 4-bit quant_map
    float *absmax;            // [n_blocks] fp32, when not nested
    bool nested;              // double quantization
    uint8_t *qabsmax;         // [n_blocks] 8-bit codes of absmax - offset
    float offset;
    int nested_block;         // 256
    long n_nested;
    float *nested_absmax;     // [n_nested]
    float nested_map[256];
    float *scb;               // int8: [rows] row absmax
    QuantOut out_dtype;       // what dequantization rounds to: the dtype of a loaded 4-bit weight's quant_state
} QWeight;

// Quantize w [rows, cols] (row-major). nested: double quantization (4-bit only). map: the nested map
// (NULL: quant_dynamic_map). Returns 0, or -1 with an error (a non-finite weight) naming `what`.
int qweight_quantize(QWeight *q, QuantType t, bool nested, const float *map, const float *w, int64_t rows, int64_t cols, const char *what);
// The fp32 absmax of every 4-bit block (nested: dequantized and the offset added back, as bitsandbytes does).
void qweight_absmax(const QWeight *q, float *absmax);
// Rows [row0, row0 + nrows) dequantized into out [nrows, cols].
void qweight_dequantize_rows(const QWeight *q, int64_t row0, int64_t nrows, float *out);
void qweight_dequantize(const QWeight *q, float *out);
// Bytes the quantized weight and its statistics take.
size_t qweight_bytes(const QWeight *q);
// Bytes for a [rows, cols] weight quantized so (what peft estimate counts).
size_t quant_bytes(QuantType t, bool nested, int64_t rows, int64_t cols);
void qweight_free(QWeight *q);
