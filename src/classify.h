// classify.h: sequence classification with the encoders (BERT, RoBERTa): data, training, evaluation
// and prediction, as peft train / eval --task classify and peft predict run them.
//
// Data: .csv (a header row) or .jsonl (one object a line) with a text column, optionally a second
// text (a pair, as MRPC or RTE), and a label column. A label is a class index (0..num_labels-1), a
// class name from config.json's id2label, or, for a one-output model (num_labels 1: regression,
// as STS-B), a number. Texts are encoded as transformers' tokenizers do for the model:
// RoBERTa "<s> A </s>" / "<s> A </s></s> B </s>", BERT "[CLS] A [SEP]" / "[CLS] A [SEP] B [SEP]" (B's
// tokens of type 1), the longer text cut first past seq_len (truncation "longest_first").
#pragma once
#include "model.h"
#include "tokenizer.h"
#include "train.h"
#include <stdbool.h>
#include <stdint.h>

typedef struct ClassifyColumns {
    const char *text;            // the text column (default: text, else sentence)
    const char *text_pair;       // the second text's column (NULL: none)
    const char *label;           // the label column (default: label)
} ClassifyColumns;

typedef struct {
    int n;
    int32_t **ids, **types;      // per example, len[i] tokens with the special tokens
    int *len;
    float *labels;               // [n]: a class index, or the value (regression); NULL without labels
    int max_len;
} ClassifyData;

// Reads and encodes path for m (seq_len 0: the model's positions, at most 512). need_labels: every
// record must have a label. Errors name the file, line and column.
int classify_data_load(ClassifyData *d, const char *path, const Model *m, const Tokenizer *tok, const ClassifyColumns *cols,
                       int seq_len, bool need_labels);
void classify_data_free(ClassifyData *d);

// The model's predictions for examples [0, d->n): class indices (or values, regression) in out[n],
// batches of `batch`, eval mode; logits (may be NULL): [n, num_labels].
int classify_predict(Model *m, const ClassifyData *d, int batch, float *out, float *logits);

// GLUE's metrics: accuracy, F1 (binary: of class 1; more classes: the macro average), Matthews
// correlation (its multi-class form), and for regression Pearson and Spearman correlations and MSE.
typedef struct {
    bool regression;
    int n;
    double accuracy, f1, mcc;
    double pearson, spearman, mse;
} ClassifyMetrics;
void classify_metrics(const float *pred, const float *gold, int n, int num_labels, ClassifyMetrics *out);

// peft train --task classify: TrainConfig's model, data, val, out, method and its options, learning
// rate and schedule, epochs / steps, batch, accumulation, clipping, weight decay, seed, threads;
// writes the adapter (task_type SEQ_CLS, the head as modules_to_save) or, for full, the model, and
// train_log.jsonl. Options it does not implement (cuda, pack, quantize, resume, checkpoints) are refused.
int classify_train(const TrainConfig *c, const ClassifyColumns *cols, const TrainCallbacks *cb, TrainResult *res);
// Loads model (+ adapter) and data, predicts, and (need_labels) scores. preds (may be NULL): malloc'd [n];
// label_names (may be NULL): config.json's id2label names, NULL-terminated, or NULL (none, or regression).
// logits_path (may be NULL): a safetensors file of the examples padded to one batch (input_ids,
// attention_mask, token_type_ids: int64 [n, T]) and their logits (float32 [n, num_labels]), so that
// another implementation can be run on the same ids (tools/interop).
int classify_run(const char *model_dir, const char *adapter_dir, const char *data_path, const ClassifyColumns *cols, int seq_len,
                 int batch, bool need_labels, ClassifyMetrics *metrics, float **preds, int *n, char ***label_names,
                 const char *logits_path);
void classify_names_free(char **names);
