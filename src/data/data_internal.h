// data_internal.h: what data.c (sequences, the cache) and data_format.c (record formats) share.
#pragma once
#include "data.h"
#include <cjson/cJSON.h>
#include <stddef.h>

// One record as what is tokenized: a prompt (no loss unless --train-on-prompt; NULL: none) and a
// completion, or chat messages for the template.
typedef struct {
    DataFormat format;          // the record's format (detected when DATA_AUTO was asked)
    char *prompt;               // malloc'd
    size_t prompt_len;
    const char *completion;     // points into the record
    size_t completion_len;
    cJSON *messages;            // chat: the record's own "messages", or built (owns_messages)
    bool owns_messages;
    const cJSON *tools;         // chat: the record's "tools" (NULL: none)
} DataRecord;

// The record of a JSON object (strings from json_parse_bytes or json_bytes_string) in `format`
// (DATA_AUTO: by its fields). where ("file:line") prefixes the errors.
int data_record(const cJSON *obj, DataFormat format, const char *where, DataRecord *r);
void data_record_free(DataRecord *r);

// Calls fn with the text of each element of the JSON array in text (a .json file), its line and
// index; stops at fn's first non-zero return. Errors name path and line.
typedef int (*JsonElementFn)(void *ctx, const char *text, size_t len, int line, int index);
int json_array_each(const char *path, const char *text, size_t len, JsonElementFn fn, void *ctx);
