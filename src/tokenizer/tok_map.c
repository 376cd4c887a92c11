// tok_map.c: see tok_map.h. Linear probing at a load factor of at most 1/2; each slot keeps
// 32 bits of the key's hash so that most failed probes are rejected without touching the entry.
#include "tok_map.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

// A fast multiply-xorshift hash over 8-byte words; good enough spread for token strings.
static uint64_t hash_bytes(const void *key, size_t len) {
    const uint8_t *p = key;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (len * 0xff51afd7ed558ccdull);
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
        h ^= h >> 31;
        p += 8;
        len -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, len);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static uint64_t slot_of(uint64_t hash, size_t index) { return (hash >> 32 << 32) | (uint64_t)(index + 1); }

void tokmap_init(TokMap *m, size_t expected) {
    memset(m, 0, sizeof *m);
    size_t slots = 16;
    while (slots < 2 * expected) slots *= 2;
    m->slots = xcalloc(slots, sizeof *m->slots);
    m->mask = slots - 1;
}

void tokmap_free(TokMap *m) {
    free(m->slots);
    free(m->entries);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

void tokmap_clear(TokMap *m) {
    memset(m->slots, 0, (m->mask + 1) * sizeof *m->slots);
    m->n = 0;
    m->keys_len = 0;
}

size_t tokmap_bytes(const TokMap *m) {
    return (m->mask + 1) * sizeof *m->slots + m->cap * sizeof *m->entries + m->keys_cap;
}

// Index of the slot holding key, or of the empty slot where it would go.
static size_t find_slot(const TokMap *m, const void *key, size_t len, uint64_t hash) {
    uint64_t tag = hash >> 32;
    for (size_t i = hash & m->mask;; i = (i + 1) & m->mask) {
        uint64_t s = m->slots[i];
        if (s == 0) return i;
        if (s >> 32 != tag) continue;
        const TokMapEntry *e = &m->entries[(uint32_t)s - 1];
        if (e->key_len == len && memcmp(m->keys + e->key_off, key, len) == 0) return i;
    }
}

bool tokmap_get(const TokMap *m, const void *key, size_t len, int32_t *value) {
    uint64_t s = m->slots[find_slot(m, key, len, hash_bytes(key, len))];
    if (s == 0) return false;
    *value = m->entries[(uint32_t)s - 1].value;
    return true;
}

static void grow_slots(TokMap *m) {
    size_t n_slots = (m->mask + 1) * 2;
    free(m->slots);
    m->slots = xcalloc(n_slots, sizeof *m->slots);
    m->mask = n_slots - 1;
    for (size_t k = 0; k < m->n; k++) {
        size_t i = m->entries[k].hash & m->mask;
        while (m->slots[i]) i = (i + 1) & m->mask;
        m->slots[i] = slot_of(m->entries[k].hash, k);
    }
}

bool tokmap_insert(TokMap *m, const void *key, size_t len, int32_t value) {
    uint64_t hash = hash_bytes(key, len);
    size_t i = find_slot(m, key, len, hash);
    if (m->slots[i]) return false;
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 64;
        m->entries = xrealloc(m->entries, m->cap * sizeof *m->entries);
    }
    if (m->keys_len + len > m->keys_cap) {
        while (m->keys_len + len > m->keys_cap) m->keys_cap = m->keys_cap ? 2 * m->keys_cap : 1024;
        m->keys = xrealloc(m->keys, m->keys_cap);
    }
    if (len) memcpy(m->keys + m->keys_len, key, len);
    m->entries[m->n] = (TokMapEntry){hash, (uint32_t)m->keys_len, (uint32_t)len, value};
    m->keys_len += len;
    m->slots[i] = slot_of(hash, m->n);
    m->n++;
    if (2 * m->n > m->mask + 1) grow_slots(m);
    return true;
}
