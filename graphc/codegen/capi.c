/* The model-independent half of a graphc model library's C glue (see capi.py).
 *
 * capi.py writes <model>_capi.c as: the model's header include, this text, the model's tables
 * (a gc_model) and the exported <model>_* functions, which call the gc_* functions below.
 * The generated native code (the steps and the worker pool) keeps no state of its own: a
 * context owns every buffer, the GEMM packing scratch and the pool, so contexts are independent.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Defined by the native object graphc emits next to this file (hidden symbols). */
typedef void (*gc_task)(void *arg, int64_t tid, int64_t nt);
void graphc_pool_init(void *pool, int64_t workers);
void graphc_pool_worker(void *pool, int64_t tid);
void graphc_pool_run(void *pool, gc_task task, void *arg, int64_t nt);
void graphc_pool_stop(void *pool);

enum gc_init { GC_ZERO, GC_FILL, GC_NORMAL, GC_UNIFORM, GC_TRUNCATED_NORMAL, GC_ORTHOGONAL };
/* table slots that are not buffers; extern slot j (gc_model.externs[j]) is GC_SLOT_EXTERN - j */
enum { GC_SLOT_POOL_RUN = -1, GC_SLOT_POOL = -2, GC_SLOT_FAULT = -3, GC_SLOT_EXTERN = -4 };
enum { GC_TRAIN, GC_INFER };
#define GC_TRUNCATE 2.0 /* truncated normal's bound in std (graphc.ir.init.TRUNCATE) */

typedef struct gc_buffer {
    const char *name; /* the value's name; random fills draw from a stream keyed by it */
    int64_t bytes;
    int dtype;      /* enum graphc_dtype */
    int init;       /* enum gc_init: how create fills it */
    double a, b;    /* GC_FILL: value; GC_NORMAL, GC_TRUNCATED_NORMAL: mean, std; GC_UNIFORM: low,
                     * high; GC_ORTHOGONAL: gain, rows (graphc.ir.init.Dist) */
} gc_buffer;

/* An integer input a step indexes with (labels): every value must lie in [0, bound). */
typedef struct gc_check {
    int input; /* in gc_model.inputs */
    int64_t bound;
} gc_check;

/* A node whose kernel reports an index from data outside its range (a gather's, a scatter's) into
 * the fault words: kernel + 1 and site as it writes them (graphc.codegen.kernels.Fault). */
typedef struct gc_site {
    int64_t kernel, site;
    const char *what; /* "model.net:9:15: gather of tok": where and what, for the message */
} gc_site;

typedef struct gc_step {
    void (*entry)(void **table);
    int nslots;
    const int *slots; /* a buffer index, or GC_SLOT_* */
    int nchecks;
    const gc_check *checks;
    int nsites;
    const gc_site *sites;
} gc_step;

/* What an extern slot's table entry points to: the generated code calls fn(user, data, count,
 * dtype) (graphc.codegen.module.EXTERN_FN). */
typedef struct gc_extern {
    graphc_extern_fn fn; /* NULL: unbound, and a step that calls it refuses to run */
    void *user;
} gc_extern;

typedef struct gc_names {
    int n;
    const graphc_tensor_info *info;
    const int *buffer; /* the buffer each one lives in */
} gc_names;

typedef struct gc_model {
    const char *name; /* the prefix of the exported functions, for messages */
    int nbuffers;
    const gc_buffer *buffers;
    gc_step steps[2];           /* GC_TRAIN, GC_INFER */
    gc_names inputs, outputs, params;
    int nexterns;
    const char *const *externs; /* the extern slots' names: both steps' slots, by name */
    const char *extern_list;    /* the names for messages: "allreduce, hook", or "none" */
    int lr_buffer, loss_buffer; /* the training step's learning-rate input and loss output */
    int threads;
    int64_t pool_bytes;
} gc_model;

typedef struct gc_worker {
    void *pool;
    int64_t tid;
    pthread_t thread;
} gc_worker;

typedef struct gc_ctx {
    const gc_model *m;
    void **own;     /* what the context allocated, per buffer */
    void **buf;     /* what the steps read, per buffer: own, or a bound input */
    void **tables[2];
    gc_extern *externs; /* per gc_model.externs, bound with <model>_set_extern */
    void *pool;
    gc_worker *workers;
    int started;    /* workers running */
    int64_t fault[4]; /* the first bad index a step's kernels met: kernel + 1, site, index, bound */
    char error[512];  /* why the last step or set_extern failed ("" after one that did not) */
} gc_ctx;

static const int64_t GC_ALIGN = 64;

static void *gc_alloc(int64_t bytes) {
    size_t n = (size_t)((bytes + GC_ALIGN - 1) / GC_ALIGN * GC_ALIGN);
    void *p = aligned_alloc((size_t)GC_ALIGN, n ? n : (size_t)GC_ALIGN);
    if (p) memset(p, 0, n);
    return p;
}

/* splitmix64's finalizer: a counter-based generator is a good hash of (seed, stream, index). */
static uint64_t gc_mix(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A uniform double in (0, 1], the n-th of stream `key`. */
static double gc_uniform(uint64_t key, uint64_t n) {
    return (double)((gc_mix(key ^ gc_mix(n)) >> 11) + 1) * 0x1p-53;
}

static void gc_store(void *p, int dtype, int64_t i, double v) {
    if (dtype == GRAPHC_F32) ((float *)p)[i] = (float)v;
    else if (dtype == GRAPHC_F64) ((double *)p)[i] = v;
    else ((int32_t *)p)[i] = (int32_t)v;
}

static double gc_load(const void *p, int dtype) {
    if (dtype == GRAPHC_F32) return *(const float *)p;
    if (dtype == GRAPHC_F64) return *(const double *)p;
    return *(const int32_t *)p;
}

static double gc_load_at(const void *p, int dtype, int64_t i) {
    return gc_load((const char *)p + i * (dtype == GRAPHC_F64 ? 8 : 4), dtype);
}

static int64_t gc_dtype_bytes(int dtype) {
    return dtype == GRAPHC_F64 ? 8 : 4;
}

/* A standard normal, the n-th of stream `key` (Box-Muller on its 2n-th and 2n+1-th uniforms). */
static double gc_normal(uint64_t key, uint64_t n) {
    double u1 = gc_uniform(key, 2 * n), u2 = gc_uniform(key, 2 * n + 1);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Makes the rows (or, where there are more rows than columns, the columns) of the rows x cols
 * matrix p orthonormal by modified Gram-Schmidt, then scales them by gain: from a matrix of
 * standard normals, a random orthogonal one (as QR does in NumPy). Vector v's element k sits at
 * v * step + k * stride. */
static void gc_orthogonalize(void *p, int dtype, int64_t rows, int64_t cols, double gain) {
    int wide = rows <= cols;
    int64_t count = wide ? rows : cols, len = wide ? cols : rows;
    int64_t step = wide ? cols : 1, stride = wide ? 1 : cols;
    for (int64_t v = 0; v < count; v++) {
        const int64_t at = v * step;
        for (int64_t u = 0; u <= v; u++) { /* u < v: take out v's part along u; u == v: normalize */
            double dot = 0;
            for (int64_t k = 0; k < len; k++)
                dot += gc_load_at(p, dtype, at + k * stride) * gc_load_at(p, dtype, u * step + k * stride);
            for (int64_t k = 0; k < len; k++) {
                double x = gc_load_at(p, dtype, at + k * stride);
                gc_store(p, dtype, at + k * stride,
                         u < v ? x - dot * gc_load_at(p, dtype, u * step + k * stride) : x / sqrt(dot));
            }
        }
    }
    for (int64_t i = 0; i < rows * cols; i++) gc_store(p, dtype, i, gain * gc_load_at(p, dtype, i));
}

/* Fills buffer i as its table says. Random ones draw from a stream keyed by (seed, name): a
 * param's values depend on the seed, its name and its shape only, not on the other params. */
static void gc_fill(gc_ctx *c, int i, uint64_t seed) {
    const gc_buffer *b = &c->m->buffers[i];
    if (b->init == GC_ZERO) return; /* gc_alloc zeroed it */
    uint64_t key = 0xCBF29CE484222325ull; /* FNV-1a of the name */
    for (const char *s = b->name; *s; s++) key = (key ^ (unsigned char)*s) * 0x100000001B3ull;
    key = gc_mix(seed ^ gc_mix(key));
    int64_t n = b->bytes / gc_dtype_bytes(b->dtype);
    for (int64_t j = 0; j < n; j++) {
        double v = b->a;
        if (b->init == GC_NORMAL) {
            v = b->a + b->b * gc_normal(key, (uint64_t)j);
        } else if (b->init == GC_TRUNCATED_NORMAL) { /* rejection: the next draw of j's own */
            double z = gc_normal(key, (uint64_t)j);
            for (uint64_t t = 1; fabs(z) > GC_TRUNCATE; t++) z = gc_normal(key, (uint64_t)j + t * (uint64_t)n);
            v = b->a + b->b * z;
        } else if (b->init == GC_ORTHOGONAL) {
            v = gc_normal(key, (uint64_t)j); /* orthogonalized below */
        } else if (b->init == GC_UNIFORM) {
            v = b->a + (b->b - b->a) * (1.0 - gc_uniform(key, (uint64_t)j)); /* [low, high) */
        }
        gc_store(c->own[i], b->dtype, j, v);
    }
    if (b->init == GC_ORTHOGONAL) gc_orthogonalize(c->own[i], b->dtype, (int64_t)b->b, n / (int64_t)b->b, b->a);
}

static void gc_tables(gc_ctx *c) {
    void (*run)(void *, gc_task, void *, int64_t) = graphc_pool_run;
    for (int s = 0; s < 2; s++) {
        const gc_step *st = &c->m->steps[s];
        for (int k = 0; k < st->nslots; k++) {
            int slot = st->slots[k];
            if (slot == GC_SLOT_POOL_RUN) memcpy(&c->tables[s][k], &run, sizeof run); /* ISO C: no cast */
            else if (slot == GC_SLOT_FAULT) c->tables[s][k] = c->fault;
            else if (slot <= GC_SLOT_EXTERN) c->tables[s][k] = &c->externs[GC_SLOT_EXTERN - slot];
            else c->tables[s][k] = slot == GC_SLOT_POOL ? c->pool : c->buf[slot];
        }
    }
}

static void *gc_worker_main(void *arg) {
    gc_worker *w = arg;
    graphc_pool_worker(w->pool, w->tid);
    return NULL;
}

static void gc_destroy(gc_ctx *c) {
    if (!c) return;
    if (c->started) {
        graphc_pool_stop(c->pool);
        for (int t = 0; t < c->started; t++) pthread_join(c->workers[t].thread, NULL);
    }
    for (int i = 0; c->own && i < c->m->nbuffers; i++) free(c->own[i]);
    free(c->own);
    free(c->buf);
    free(c->tables[0]);
    free(c->tables[1]);
    free(c->externs);
    free(c->pool);
    free(c->workers);
    free(c);
}

static gc_ctx *gc_create(const gc_model *m, uint64_t seed) {
    gc_ctx *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->m = m;
    int nw = m->threads - 1;
    c->own = calloc((size_t)m->nbuffers, sizeof(void *));
    c->buf = calloc((size_t)m->nbuffers, sizeof(void *));
    c->tables[0] = calloc((size_t)m->steps[0].nslots, sizeof(void *));
    c->tables[1] = calloc((size_t)m->steps[1].nslots, sizeof(void *));
    c->externs = calloc((size_t)(m->nexterns > 0 ? m->nexterns : 1), sizeof(gc_extern));
    c->pool = gc_alloc(m->pool_bytes);
    c->workers = calloc((size_t)(nw > 0 ? nw : 1), sizeof(gc_worker));
    if (!c->own || !c->buf || !c->tables[0] || !c->tables[1] || !c->externs || !c->pool || !c->workers) {
        gc_destroy(c);
        return NULL;
    }
    for (int i = 0; i < m->nbuffers; i++) {
        if (!(c->own[i] = gc_alloc(m->buffers[i].bytes))) {
            gc_destroy(c);
            return NULL;
        }
        c->buf[i] = c->own[i];
        gc_fill(c, i, seed);
    }
    gc_tables(c);
    if (nw > 0) {
        graphc_pool_init(c->pool, nw);
        for (int t = 0; t < nw; t++) {
            c->workers[t].pool = c->pool;
            c->workers[t].tid = t + 1;
            if (pthread_create(&c->workers[t].thread, NULL, gc_worker_main, &c->workers[t])) {
                gc_destroy(c); /* stops and joins the workers started so far */
                return NULL;
            }
            c->started = t + 1;
        }
    }
    return c;
}

/* The index of `name` in `names`, or -1. */
static int gc_find(const gc_names *names, const char *name) {
    for (int i = 0; name && i < names->n; i++)
        if (!strcmp(names->info[i].name, name)) return i;
    return -1;
}

static int64_t gc_bytes(const graphc_tensor_info *t) {
    return t->size * gc_dtype_bytes(t->dtype);
}

/* Makes the steps read buffer b at p; the tables are rebuilt only when that changes them. */
static void gc_point(gc_ctx *c, int b, void *p) {
    if (c->buf[b] == p) return;
    c->buf[b] = p;
    gc_tables(c);
}

/* Every exported function that takes a context checks it for NULL (the cheap misuse to catch). */
static int gc_copy_in(gc_ctx *c, const gc_names *names, const char *name, const void *data) {
    int i = gc_find(names, name);
    if (!c || i < 0 || !data) return GRAPHC_EINVAL;
    int b = names->buffer[i];
    gc_point(c, b, c->own[b]);
    memcpy(c->own[b], data, (size_t)gc_bytes(&names->info[i]));
    return GRAPHC_OK;
}

static int gc_copy_out(gc_ctx *c, const gc_names *names, const char *name, void *out) {
    int i = gc_find(names, name);
    if (!c || i < 0 || !out) return GRAPHC_EINVAL;
    memcpy(out, c->buf[names->buffer[i]], (size_t)gc_bytes(&names->info[i]));
    return GRAPHC_OK;
}

static int gc_bind(gc_ctx *c, const char *name, void *data) {
    int i = c ? gc_find(&c->m->inputs, name) : -1;
    if (i < 0) return GRAPHC_EINVAL;
    int b = c->m->inputs.buffer[i];
    gc_point(c, b, data ? data : c->own[b]);
    return GRAPHC_OK;
}

static void *gc_lookup(gc_ctx *c, const gc_names *names, const char *name) {
    int i = gc_find(names, name);
    return !c || i < 0 ? NULL : c->buf[names->buffer[i]];
}

static int gc_set_lr(gc_ctx *c, double lr) {
    if (!c || !isfinite(lr)) return GRAPHC_EINVAL;
    gc_store(c->own[c->m->lr_buffer], c->m->buffers[c->m->lr_buffer].dtype, 0, lr);
    return GRAPHC_OK;
}

/* Binds extern slot `slot` to fn(user, ...); fn NULL unbinds it. An unknown slot is named in c->error. */
static int gc_set_extern(gc_ctx *c, const char *slot, graphc_extern_fn fn, void *user) {
    if (!c) return GRAPHC_EINVAL;
    for (int j = 0; slot && j < c->m->nexterns; j++)
        if (!strcmp(c->m->externs[j], slot)) {
            c->externs[j] = (gc_extern){fn, user};
            c->error[0] = '\0';
            return GRAPHC_OK;
        }
    snprintf(c->error, sizeof c->error, "no extern slot %s (slots: %s)", slot ? slot : "NULL", c->m->extern_list);
    return GRAPHC_EINVAL;
}

/* The first bad index step st's kernels reported, as c->error says it; the fault words are
 * cleared for the next step. */
static int gc_fault(gc_ctx *c, const gc_step *st) {
    const char *what = "an index from data";
    for (int k = 0; k < st->nsites; k++)
        if (st->sites[k].kernel == c->fault[0] && st->sites[k].site == c->fault[1]) what = st->sites[k].what;
    snprintf(c->error, sizeof c->error, "%s: index %lld out of range [0, %lld)", what,
             (long long)c->fault[2], (long long)c->fault[3]);
    memset(c->fault, 0, sizeof c->fault);
    return GRAPHC_EINDEX;
}

/* Runs step s if every extern slot it calls is bound (the generated code would call NULL) and the
 * integer inputs it indexes with are in range (a label past the classes would match none: a loss
 * of -0 and wrong gradients, no error). An index the step computes itself (a gather's inside a
 * scan) is checked by the kernel reading it, which reports it in c->fault. */
static int gc_run(gc_ctx *c, int s) {
    if (!c) return GRAPHC_EINVAL;
    const gc_step *st = &c->m->steps[s];
    const gc_names *in = &c->m->inputs;
    c->error[0] = '\0';
    for (int k = 0; k < st->nslots; k++)
        if (st->slots[k] <= GC_SLOT_EXTERN && !c->externs[GC_SLOT_EXTERN - st->slots[k]].fn) {
            const char *slot = c->m->externs[GC_SLOT_EXTERN - st->slots[k]];
            snprintf(c->error, sizeof c->error, "extern slot %s has no function: %s_set_extern(ctx, \"%s\", "
                     "fn, user) first; nothing ran", slot, c->m->name, slot);
            return GRAPHC_EINVAL;
        }
    for (int k = 0; k < st->nchecks; k++) {
        int i = st->checks[k].input;
        const int32_t *v = c->buf[in->buffer[i]];
        for (int64_t j = 0; j < in->info[i].size; j++)
            if (v[j] < 0 || v[j] >= st->checks[k].bound) {
                snprintf(c->error, sizeof c->error, "input %s: element %lld is %d, out of range [0, %lld); nothing ran",
                         in->info[i].name, (long long)j, (int)v[j], (long long)st->checks[k].bound);
                return GRAPHC_ERANGE;
            }
    }
    memset(c->fault, 0, sizeof c->fault);
    st->entry(c->tables[s]);
    return c->fault[0] ? gc_fault(c, st) : GRAPHC_OK;
}

static int gc_train_step(gc_ctx *c, double *loss) {
    int status = gc_run(c, GC_TRAIN);
    if (status == GRAPHC_OK && loss)
        *loss = gc_load(c->buf[c->m->loss_buffer], c->m->buffers[c->m->loss_buffer].dtype);
    return status;
}
