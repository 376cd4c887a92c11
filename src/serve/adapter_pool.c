// adapter_pool.c: named adapter folders for `peft serve`, loaded detached (adapters_load_detached)
// when first needed and kept up to max_loaded at once; the least recently used set that no
// running request holds is freed to make room. Loading happens outside the lock (a slow disk
// read never stalls requests for other adapters); a second request for an adapter being loaded
// waits for that load instead of starting its own. VeRA sets whose projections are equal (same key,
// r and shapes: the usual case for adapters of one base) share one copy of them, so each VeRA
// adapter in memory costs only its lambda vectors.
#include "serve.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// One pair of VeRA projections shared by the loaded sets that have these values.
typedef struct {
    uint64_t fingerprint;
    int r, max_in, max_out;
    float *A, *B;
    int refs;
} SharedProjection;

struct PoolEntry {
    char *name, *path;
    SharedProjection *proj;   // VeRA: the set's vera_A / vera_B belong to this
    char peft_type[16];
    AdapterSet *set;          // NULL while not in memory
    int refs;                 // requests holding it (and a loader pinning it)
    bool loading;
    bool removed;             // unregistered: freed when refs reaches 0
    uint64_t last_used;
    uint64_t serial;          // which load set is (adapter_pool_entry_serial)
};

struct AdapterPool {
    Model *m;
    int max_loaded;
    pthread_mutex_t mu;
    pthread_cond_t loaded_cv;
    pthread_cond_t released_cv;   // a set became unheld (room for another)
    PoolEntry **e;            // registered
    int n, cap;
    PoolEntry **gone;         // removed while in use
    int n_gone;
    int n_loaded;             // sets in memory or being loaded (registered or gone)
    uint64_t clock;
    long loads, evictions;
    SharedProjection **proj;
    int n_proj;
    bool stopping;            // waits for room end (503)
};

// A freshly loaded VeRA set gives up its own projections for an equal shared pair (or lends its
// pair to be shared). Under the lock.
static void share_projection(AdapterPool *p, PoolEntry *e) {
    AdapterSet *set = e->set;
    if (set->cfg.type != METHOD_VERA || !set->vera_A) return;
    size_t na = (size_t)set->cfg.r * set->vera_max_in, nb = (size_t)set->vera_max_out * set->cfg.r;
    for (int i = 0; i < p->n_proj; i++) {
        SharedProjection *sp = p->proj[i];
        if (sp->fingerprint == set->vera_fingerprint && sp->r == set->cfg.r && sp->max_in == set->vera_max_in &&
            sp->max_out == set->vera_max_out && !memcmp(sp->A, set->vera_A, sizeof(float) * na) && !memcmp(sp->B, set->vera_B, sizeof(float) * nb)) {
            free(set->vera_A);
            free(set->vera_B);
            set->vera_A = sp->A;
            set->vera_B = sp->B;
            sp->refs++;
            e->proj = sp;
            return;
        }
    }
    SharedProjection *sp = xcalloc(1, sizeof *sp);
    *sp = (SharedProjection){set->vera_fingerprint, set->cfg.r, set->vera_max_in, set->vera_max_out, set->vera_A, set->vera_B, 1};
    p->proj = xrealloc(p->proj, sizeof(SharedProjection *) * (p->n_proj + 1));
    p->proj[p->n_proj++] = sp;
    e->proj = sp;
}

// Frees e's set (returning its share of the projections).
static void unload(AdapterPool *p, PoolEntry *e) {
    if (!e->set) return;
    SharedProjection *sp = e->proj;
    if (sp) {
        e->set->vera_A = e->set->vera_B = NULL;  // not the set's to free
        if (--sp->refs == 0) {
            for (int i = 0; i < p->n_proj; i++)
                if (p->proj[i] == sp) { p->proj[i] = p->proj[--p->n_proj]; break; }
            free(sp->A);
            free(sp->B);
            free(sp);
        }
        e->proj = NULL;
    }
    adapter_set_free(e->set);
    e->set = NULL;
}

AdapterPool *adapter_pool_new(Model *m, int max_loaded) {
    AdapterPool *p = xcalloc(1, sizeof *p);
    p->m = m;
    p->max_loaded = max_loaded > 0 ? max_loaded : 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->loaded_cv, NULL);
    pthread_cond_init(&p->released_cv, NULL);
    return p;
}

static void entry_free(AdapterPool *p, PoolEntry *e) {
    unload(p, e);
    free(e->name);
    free(e->path);
    free(e);
}

void adapter_pool_free(AdapterPool *p) {
    if (!p) return;
    for (int i = 0; i < p->n; i++) entry_free(p, p->e[i]);
    for (int i = 0; i < p->n_gone; i++) entry_free(p, p->gone[i]);
    free(p->e);
    free(p->gone);
    free(p->proj);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->loaded_cv);
    pthread_cond_destroy(&p->released_cv);
    free(p);
}

static PoolEntry *find(AdapterPool *p, const char *name) {
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->e[i]->name, name)) return p->e[i];
    return NULL;
}

bool adapter_pool_has(AdapterPool *p, const char *name) {
    pthread_mutex_lock(&p->mu);
    bool has = find(p, name) != NULL;
    pthread_mutex_unlock(&p->mu);
    return has;
}

// Names are URL- and file-safe: [A-Za-z0-9._-], 1..64 characters, not "base", not "." or "..".
static bool valid_name(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 64 || !strcmp(s, "base") || !strcmp(s, ".") || !strcmp(s, "..")) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) return false;
    }
    return true;
}

// Frees least recently used unheld sets until one more fits. Under the lock. False when every
// loaded set is held.
static bool make_room(AdapterPool *p) {
    while (p->n_loaded >= p->max_loaded) {
        PoolEntry *lru = NULL;
        for (int i = 0; i < p->n; i++) {
            PoolEntry *e = p->e[i];
            if (e->set && !e->refs && !e->loading && (!lru || e->last_used < lru->last_used)) lru = e;
        }
        if (!lru) return false;
        unload(p, lru);
        p->n_loaded--;
        p->evictions++;
    }
    return true;
}

// Loads e (pinned by the caller, lock held; released while reading the files). When every slot
// is held by running requests, waits up to wait_s seconds for one to be released.
static int load_entry(AdapterPool *p, PoolEntry *e, int *status, double wait_s) {
    while (e->loading) pthread_cond_wait(&p->loaded_cv, &p->mu);
    if (e->set) return 0;
    double deadline = now_seconds() + wait_s;
    while (!make_room(p)) {
        if (p->stopping) {
            *status = 503;
            return peft_fail("the server is shutting down");
        }
        double left = deadline - now_seconds();
        if (left <= 0) {
            *status = 429;
            return peft_fail("all %d adapter slots are held by running requests; try again later", p->max_loaded);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double t = ts.tv_sec + ts.tv_nsec * 1e-9 + (left < 1 ? left : 1);
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&p->released_cv, &p->mu, &ts);
        while (e->loading) pthread_cond_wait(&p->loaded_cv, &p->mu);
        if (e->set) return 0;  // another request loaded it meanwhile
    }
    e->loading = true;
    p->n_loaded++;
    char *path = xstrdup(e->path);
    pthread_mutex_unlock(&p->mu);
    AdapterSet *set = adapters_load_detached(p->m, path);
    free(path);
    pthread_mutex_lock(&p->mu);
    e->loading = false;
    pthread_cond_broadcast(&p->loaded_cv);
    if (!set) {
        p->n_loaded--;
        *status = 500;
        return peft_fail_context("adapter \"%s\" does not load: ", e->name);
    }
    e->set = set;
    share_projection(p, e);
    snprintf(e->peft_type, sizeof e->peft_type, "%s", method_get(set->cfg.type)->peft_type);
    e->serial = (uint64_t)++p->loads;
    return 0;
}

static PoolEntry *register_entry(AdapterPool *p, const char *name, const char *path) {
    PoolEntry *e = xcalloc(1, sizeof *e);
    e->name = xstrdup(name);
    e->path = xstrdup(path);
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 16;
        p->e = xrealloc(p->e, sizeof(PoolEntry *) * p->cap);
    }
    p->e[p->n++] = e;
    return e;
}

static void unregister(AdapterPool *p, PoolEntry *e) {
    for (int i = 0; i < p->n; i++)
        if (p->e[i] == e) {
            memmove(p->e + i, p->e + i + 1, sizeof(PoolEntry *) * (p->n - i - 1));
            p->n--;
            break;
        }
}

// Unregisters e; it waits among the gone entries until nothing holds it.
static void retire_entry(AdapterPool *p, PoolEntry *e) {
    unregister(p, e);
    e->removed = true;
    p->gone = xrealloc(p->gone, sizeof(PoolEntry *) * (p->n_gone + 1));
    p->gone[p->n_gone++] = e;
}

// Frees a removed entry once nothing holds it.
static void drop_if_unused(AdapterPool *p, PoolEntry *e) {
    if (!e->removed || e->refs || e->loading) return;
    for (int i = 0; i < p->n_gone; i++)
        if (p->gone[i] == e) { p->gone[i] = p->gone[--p->n_gone]; break; }
    if (e->set) p->n_loaded--;
    entry_free(p, e);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int adapter_pool_scan(AdapterPool *p, const char *dir, char **warnings) {
    *warnings = NULL;
    DIR *d = opendir(dir);
    if (!d) return peft_fail("%s: cannot open the adapters folder", dir);
    char **names = NULL;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *sub = path_join(dir, de->d_name), *cfg = path_join(sub, "adapter_config.json");
        if (dir_exists(sub) && file_exists(cfg)) {
            names = xrealloc(names, sizeof(char *) * (n + 1));
            names[n++] = xstrdup(de->d_name);
        }
        free(sub);
        free(cfg);
    }
    closedir(d);
    qsort(names, n, sizeof(char *), cmp_str);  // a stable order: the first max_loaded are loaded now
    char *warn = NULL;
    size_t wlen = 0;
    for (int i = 0; i < n; i++) {
        char *sub = path_join(dir, names[i]);
        char *msg = NULL;
        if (!valid_name(names[i])) msg = xasprintf("%s: skipped: adapter names use only letters, digits, '.', '_' and '-' (64 at most)", sub);
        else {
            pthread_mutex_lock(&p->mu);
            PoolEntry *e = register_entry(p, names[i], sub);
            AdapterConfig cfg;
            char *cfg_path = path_join(sub, "adapter_config.json");
            if (adapter_config_load(&cfg, cfg_path)) {
                msg = xasprintf("%s: skipped: %s", sub, peft_last_error());
                unregister(p, e);
                entry_free(p, e);
            } else {
                snprintf(e->peft_type, sizeof e->peft_type, "%s", method_get(cfg.type)->peft_type);
                adapter_config_free(&cfg);
                int status;
                if (p->n_loaded < p->max_loaded) {
                    e->refs++;
                    if (load_entry(p, e, &status, 0)) {
                        msg = xasprintf("%s: skipped: %s", sub, peft_last_error());
                        unregister(p, e);
                        entry_free(p, e);
                    } else e->refs--;
                }
            }
            free(cfg_path);
            pthread_mutex_unlock(&p->mu);
        }
        if (msg) {
            size_t k = strlen(msg);
            warn = xrealloc(warn, wlen + k + 2);
            memcpy(warn + wlen, msg, k);
            wlen += k;
            warn[wlen++] = '\n';
            warn[wlen] = 0;
            free(msg);
        }
        free(sub);
        free(names[i]);
    }
    free(names);
    *warnings = warn;
    return 0;
}

int adapter_pool_add(AdapterPool *p, const char *name, const char *path, int *status) {
    *status = 400;
    if (!valid_name(name)) return peft_fail("adapter name \"%.80s\" is not allowed: use letters, digits, '.', '_' and '-' (64 at most), not \"base\"", name);
    if (!dir_exists(path)) return peft_fail("%s is not a folder", path);
    pthread_mutex_lock(&p->mu);
    if (find(p, name)) {
        pthread_mutex_unlock(&p->mu);
        *status = 409;
        return peft_fail("an adapter named \"%s\" is already registered (DELETE it first)", name);
    }
    PoolEntry *e = register_entry(p, name, path);
    e->refs++;
    int rc = load_entry(p, e, status, 0);
    e->refs--;
    if (rc && *status == 500) *status = 400;  // a folder the client named: its problem
    else if (!rc && e->removed) {
        *status = 409;
        rc = peft_fail("adapter \"%s\" was removed while it loaded", name);
    }
    if (rc) {
        if (!e->removed) retire_entry(p, e);
        drop_if_unused(p, e);  // a set loaded for an entry removed meanwhile goes too
    } else e->last_used = ++p->clock;
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int adapter_pool_remove(AdapterPool *p, const char *name, int *status) {
    pthread_mutex_lock(&p->mu);
    PoolEntry *e = find(p, name);
    if (!e) {
        pthread_mutex_unlock(&p->mu);
        *status = 404;
        return peft_fail("no adapter named \"%.80s\"", name);
    }
    retire_entry(p, e);
    drop_if_unused(p, e);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

PoolEntry *adapter_pool_acquire(AdapterPool *p, const char *name, AdapterSet **set, int *status, double wait_s) {
    pthread_mutex_lock(&p->mu);
    PoolEntry *e = find(p, name);
    if (!e) {
        pthread_mutex_unlock(&p->mu);
        *status = 404;
        peft_fail("the model \"%.80s\" does not exist: name \"base\" or an adapter of GET /v1/models", name);
        return NULL;
    }
    e->refs++;
    e->last_used = ++p->clock;
    if (load_entry(p, e, status, wait_s)) {
        e->refs--;
        drop_if_unused(p, e);
        pthread_mutex_unlock(&p->mu);
        return NULL;
    }
    *set = e->set;
    pthread_mutex_unlock(&p->mu);
    return e;
}

void adapter_pool_stop(AdapterPool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->released_cv);
    pthread_mutex_unlock(&p->mu);
}

void adapter_pool_release(AdapterPool *p, PoolEntry *e) {
    if (!p || !e) return;
    pthread_mutex_lock(&p->mu);
    if (--e->refs == 0) pthread_cond_broadcast(&p->released_cv);
    drop_if_unused(p, e);
    pthread_mutex_unlock(&p->mu);
}

uint64_t adapter_pool_entry_serial(const PoolEntry *e) { return e ? e->serial : 0; }

void *adapter_pool_list_json(AdapterPool *p) {
    cJSON *a = cJSON_CreateArray();
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n; i++) {
        const PoolEntry *e = p->e[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", e->name);
        cJSON_AddStringToObject(o, "object", "model");
        cJSON_AddNumberToObject(o, "created", 0);
        cJSON_AddStringToObject(o, "owned_by", "peft");
        cJSON_AddStringToObject(o, "root", "base");
        cJSON_AddStringToObject(o, "peft_type", e->peft_type);
        cJSON_AddBoolToObject(o, "loaded", e->set != NULL);
        cJSON_AddNumberToObject(o, "in_use", e->refs);
        cJSON_AddItemToArray(a, o);
    }
    pthread_mutex_unlock(&p->mu);
    return a;
}

void adapter_pool_stats(AdapterPool *p, PoolStats *s) {
    pthread_mutex_lock(&p->mu);
    s->registered = p->n;
    s->loaded = p->n_loaded;
    s->in_use = 0;
    for (int i = 0; i < p->n; i++) s->in_use += p->e[i]->refs > 0;
    for (int i = 0; i < p->n_gone; i++) s->in_use += p->gone[i]->refs > 0;
    s->loads = p->loads;
    s->evictions = p->evictions;
    pthread_mutex_unlock(&p->mu);
}
