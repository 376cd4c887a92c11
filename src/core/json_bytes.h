// json_bytes.h: JSON strings as bytes. cJSON keeps a string NUL-terminated and without its length,
// so a "\u0000" inside cuts it short at the first strlen; these carry the length.
#pragma once
#include <cjson/cJSON.h>
#include <stddef.h>

// cJSON_ParseWithLength, and each string item's decoded length (NUL bytes included) recorded for
// json_bytes. NULL + error when the text is not JSON or a key holds a NUL byte.
cJSON *json_parse_bytes(const char *text, size_t len);
// A string item's bytes and their number (items of json_parse_bytes only).
const char *json_bytes(const cJSON *x, size_t *len);
// A string item of s[0..n) (NUL bytes kept) whose length json_bytes reads, as if parsed.
cJSON *json_bytes_string(const char *s, size_t n);
// A raw item holding the JSON string of s[0..n) (NUL bytes as \u0000), escaped as cJSON escapes.
cJSON *json_bytes_item(const char *s, size_t n);
