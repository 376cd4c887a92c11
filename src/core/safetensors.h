// safetensors.h: read (mmap, fully validated) and write (temp file + rename) the safetensors
// format, and open a model folder's weights: model.safetensors or a sharded
// model.safetensors.index.json.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { DT_F32, DT_F16, DT_BF16, DT_I64, DT_I32, DT_U8, DT_BOOL, DT_I8 } DType;

enum { ST_MAX_DIMS = 8 };

typedef struct {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;     // points into the mapping (or into the writer's copy)
    size_t nbytes;
} StTensor;

typedef struct {
    char *path;
    void *map;
    size_t map_len;
    int n;
    StTensor *tensors;    // sorted by name: st_find is a binary search
} SafeTensors;

size_t dtype_size(DType dt);
const char *dtype_name(DType dt);

// Open and validate: header length within the file, header is a JSON object, known dtypes,
// shape x dtype size == data_offsets span, offsets inside the data area, no overlaps.
// Errors name the file and the problem.
int st_open(SafeTensors *st, const char *path);
// Same validation over a caller-owned buffer (used by the fuzzer; data is not copied).
int st_parse(SafeTensors *st, const void *buf, size_t len, const char *name_for_errors);
void st_close(SafeTensors *st);
const StTensor *st_find(const SafeTensors *st, const char *name);

// "2, 3" for shape [2, 3], for messages; cut short rather than overflow buf.
const char *st_shape_text(int ndim, const int64_t *shape, char *buf, size_t cap);

// Convert any float dtype (F32/F16/BF16) to fp32. I64 data is rejected for this call.
int st_to_f32(const StTensor *t, float *out);
// st_to_f32 for weights read from `file`: every value must be finite too. Errors name the file and the tensor.
int st_to_f32_finite(const StTensor *t, float *out, const char *file);
// IEEE half to float, exact.
float st_f16_to_f32(uint16_t h);
// Read an I64 tensor into out (any integer dtype accepted).
int st_to_i64(const StTensor *t, int64_t *out);

// A model folder's weights, one or many shards, looked up by tensor name across shards.
typedef struct {
    int n_files;
    SafeTensors *files;
} StModel;

// dir/model.safetensors, or dir/model.safetensors.index.json with its shards.
int st_model_open(StModel *m, const char *dir);
void st_model_close(StModel *m);
// Returns the tensor and which file holds it (for error messages), or NULL.
const StTensor *st_model_find(const StModel *m, const char *name, const char **file_out);

// Writer: collect tensors (the data is copied), then save atomically.
typedef struct StWriter StWriter;
StWriter *st_writer_new(void);
void st_writer_add(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, const void *data);
void st_writer_add_f32(StWriter *w, const char *name, int ndim, const int64_t *shape, const float *data);
void st_writer_metadata(StWriter *w, const char *key, const char *value);
int st_writer_save(StWriter *w, const char *path);
void st_writer_free(StWriter *w);
