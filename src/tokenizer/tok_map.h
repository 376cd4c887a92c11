// tok_map.h: an open-addressing hash map from byte strings to int32 values, used by the tokenizer
// for its vocabulary (token text -> id), its merges (id pair -> rank) and its word cache.
// Keys are copied into the map's own storage.
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len;
    int32_t value;
} TokMapEntry;

typedef struct {
    uint64_t *slots;      // 0 = empty, else (high 32 bits of the hash << 32) | (entry index + 1)
    size_t mask;          // number of slots - 1 (a power of two)
    TokMapEntry *entries; // in insertion order
    size_t n, cap;
    char *keys;           // all keys, back to back
    size_t keys_len, keys_cap;
} TokMap;

void tokmap_init(TokMap *m, size_t expected);
void tokmap_free(TokMap *m);
void tokmap_clear(TokMap *m);  // empty it, keeping the memory
bool tokmap_get(const TokMap *m, const void *key, size_t len, int32_t *value);
// Insert key -> value. Returns false (and keeps the old value) when the key is already present.
bool tokmap_insert(TokMap *m, const void *key, size_t len, int32_t value);
size_t tokmap_bytes(const TokMap *m); // memory held, for cache size limits
