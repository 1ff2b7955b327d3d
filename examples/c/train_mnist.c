/* Trains graphc's compiled models/mlp.net on MNIST through libmlp's C interface: no Python.
 *
 * Reads the four MNIST IDX files itself (gzip'ed or plain, through zlib), runs one training step
 * per shuffled batch of MLP_BATCH images, then predicts the test set with mlp_infer and prints the
 * epoch's mean training loss, the test loss and the test accuracy, and at the end a hash of the
 * params and training state.
 *
 * Built with -DGRAPHC_MPI (mpicc) against a library compiled with `graphc compile --ranks N`, it
 * trains data-parallel: run by N MPI processes, each feeds its MLP_BATCH rows of every global
 * batch of N * MLP_BATCH, and the step's "allreduce" slot sums their gradients, loss and metrics
 * with MPI_Allreduce, so every rank applies the same update. Rank 0 evaluates and prints.
 *
 * usage: train_mnist DATA_DIR [EPOCHS [SEED]]   (DATA_DIR: graphc's data/mnist)
 *        mpirun -np N train_mnist_mpi DATA_DIR [EPOCHS [SEED]]
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "mlp.h"

#ifdef GRAPHC_MPI
#include <mpi.h>

/* The step's "allreduce" slot: sums the count values at data in place over the ranks of the
 * communicator `user` points to (the step then divides them by its rank count). The MLP's one
 * call sends about 270k values; a model past 2^31 would send them in pieces. */
static void allreduce(void *user, void *data, int64_t count, int32_t dtype) {
    MPI_Datatype type = dtype == GRAPHC_F32 ? MPI_FLOAT : dtype == GRAPHC_F64 ? MPI_DOUBLE : MPI_INT32_T;
    MPI_Allreduce(MPI_IN_PLACE, data, (int)count, type, MPI_SUM, *(MPI_Comm *)user);
}
#endif

typedef struct {
    int64_t n;      /* samples */
    int64_t width;  /* bytes per sample */
    uint8_t *data;
} idx_data;

static void die(const char *what, const char *detail) {
    fprintf(stderr, "train_mnist: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

/* The whole file at `path`, decompressed if it is gzip'ed (zlib reads plain files as they are). */
static uint8_t *read_file(const char *path, size_t *len) {
    gzFile f = gzopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    int got;
    while (buf && (got = gzread(f, buf + n, (unsigned)(cap - n))) > 0) {
        n += (size_t)got;
        if (n == cap) {
            uint8_t *bigger = realloc(buf, cap *= 2);
            if (!bigger) free(buf);
            buf = bigger;
        }
    }
    gzclose(f);
    *len = n;
    return buf;
}

static uint32_t big_endian(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* An IDX file of unsigned bytes with `rank` dims (1: labels, 3: images): DIR/NAME.gz or DIR/NAME. */
static idx_data load_idx(const char *dir, const char *name, int rank) {
    char path[4096];
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s.gz", dir, name);
    uint8_t *raw = read_file(path, &len);
    if (!raw) {
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (!(raw = read_file(path, &len))) die("cannot read", path);
    }
    size_t head = 4 + 4 * (size_t)rank;
    if (len < head || big_endian(raw) != (0x0800u | (uint32_t)rank)) die("not an IDX file of bytes", path);
    idx_data d = {big_endian(raw + 4), 1, NULL};
    for (int i = 1; i < rank; i++) d.width *= big_endian(raw + 4 + 4 * i);
    if (len - head != (size_t)(d.n * d.width)) die("IDX file size does not match its dims", path);
    d.data = malloc(len - head);
    memcpy(d.data, raw + head, len - head);
    free(raw);
    return d;
}

/* splitmix64: the example's own shuffling generator. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Copies sample rows `order[0..count)` of `images`/`labels` into the model's input buffers, pixels
 * scaled to [0, 1]; rows from count to MLP_BATCH are zeroed. */
static void fill_batch(float *x, int32_t *y, const idx_data *images, const idx_data *labels,
                       const int64_t *order, int64_t count) {
    int64_t w = images->width;
    memset(x, 0, sizeof(float) * MLP_BATCH * (size_t)w);
    memset(y, 0, sizeof(int32_t) * MLP_BATCH);
    for (int64_t r = 0; r < count; r++) {
        const uint8_t *px = images->data + order[r] * w;
        for (int64_t j = 0; j < w; j++) x[r * w + j] = px[j] / 255.0f;
        y[r] = labels->data[order[r]];
    }
}

/* Checks the library is the model this program was written for, by its reported shapes. */
static void check_model(int64_t width) {
    const graphc_tensor_info *x = mlp_input_info(0), *y = mlp_input_info(1);
    int has_logits = 0;
    for (int i = 0; i < mlp_num_outputs(); i++) {
        const graphc_tensor_info *o = mlp_output_info(i);
        has_logits |= !strcmp(o->name, "logits") && o->rank == 2 && o->shape[1] == 10;
    }
    if (!x || !y || strcmp(x->name, "x") || x->dtype != GRAPHC_F32 || x->size != MLP_BATCH * width
        || strcmp(y->name, "y") || y->dtype != GRAPHC_I32 || !has_logits)
        die("libmlp is not an MNIST classifier with inputs x, y and output logits", NULL);
}

/* FNV-1a over the bytes of every param and training state value: equal on every rank. */
static uint64_t params_hash(mlp_ctx *ctx) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (int i = 0; i < mlp_num_params(); i++) {
        const graphc_tensor_info *p = mlp_param_info(i);
        size_t bytes = (size_t)p->size * (p->dtype == GRAPHC_F64 ? 8 : 4);
        uint8_t *v = malloc(bytes);
        if (!v || mlp_get_param(ctx, p->name, v) != GRAPHC_OK) die("mlp_get_param", p->name);
        for (size_t j = 0; j < bytes; j++) h = (h ^ v[j]) * 0x100000001B3ull;
        free(v);
    }
    return h;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DATA_DIR [EPOCHS [SEED]]\n", argv[0]);
        return 2;
    }
    int rank = 0, ranks = 1; /* this process feeds rows [rank, rank + 1) * MLP_BATCH of each global batch */
#ifdef GRAPHC_MPI
    MPI_Init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &ranks);
#endif
    if (ranks != MLP_RANKS) { /* the step divides the sums by MLP_RANKS */
        char why[128];
        snprintf(why, sizeof why, "compiled for %d (graphc compile --ranks), run by %d", MLP_RANKS, ranks);
        die("libmlp's rank count is not this run's", why);
    }
    int epochs = argc > 2 ? atoi(argv[2]) : 1;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 0;
    idx_data xtr = load_idx(argv[1], "train-images-idx3-ubyte", 3);
    idx_data ytr = load_idx(argv[1], "train-labels-idx1-ubyte", 1);
    idx_data xte = load_idx(argv[1], "t10k-images-idx3-ubyte", 3);
    idx_data yte = load_idx(argv[1], "t10k-labels-idx1-ubyte", 1);
    if (xtr.n != ytr.n || xte.n != yte.n) die("image and label counts differ", argv[1]);
    if (rank == 0) printf("data %s: %lld train, %lld test samples\n", argv[1], (long long)xtr.n, (long long)xte.n);
    check_model(xtr.width);

    mlp_ctx *ctx = mlp_create(seed); /* the same seed on every rank: the same params, nothing to send */
    if (!ctx) die("mlp_create failed", NULL);
#ifdef GRAPHC_MPI
    if (mlp_set_extern(ctx, "allreduce", allreduce, &comm) != GRAPHC_OK) die("mlp_set_extern", mlp_error(ctx));
#endif
    float *x = mlp_input(ctx, "x"); /* fill the context's own input buffers in place */
    int32_t *y = mlp_input(ctx, "y");
    const float *logits = mlp_output(ctx, "logits");
    int64_t n = xtr.n > xte.n ? xtr.n : xte.n;
    int64_t *order = malloc(sizeof(int64_t) * (size_t)n);
    uint64_t rng = seed + 1; /* every rank draws the same order, and takes its own rows of it */

    for (int epoch = 1; epoch <= epochs; epoch++) {
        for (int64_t i = 0; i < xtr.n; i++) order[i] = i;
        for (int64_t i = xtr.n - 1; i > 0; i--) { /* Fisher-Yates */
            int64_t j = (int64_t)(next_random(&rng) % (uint64_t)(i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        int64_t steps = xtr.n / (ranks * MLP_BATCH); /* the remainder is dropped, as graphc train does */
        double loss = 0.0, t0 = now();
        for (int64_t s = 0; s < steps; s++) {
            fill_batch(x, y, &xtr, &ytr, order + (s * ranks + rank) * MLP_BATCH, MLP_BATCH);
            double step_loss; /* the global batch's: the same on every rank */
            if (mlp_train_step(ctx, &step_loss) != GRAPHC_OK) die("mlp_train_step", mlp_error(ctx));
            loss += step_loss;
        }
        double seconds = now() - t0;
        if (rank != 0) continue; /* its params are rank 0's */

        /* test set: whole batches, the last one zero-padded; each row's logits are its own */
        double test_loss = 0.0;
        int64_t correct = 0;
        for (int64_t i = 0; i < xte.n; i++) order[i] = i;
        for (int64_t s = 0; s < xte.n; s += MLP_BATCH) {
            int64_t count = xte.n - s < MLP_BATCH ? xte.n - s : MLP_BATCH;
            fill_batch(x, y, &xte, &yte, order + s, count);
            if (mlp_infer(ctx) != GRAPHC_OK) die("mlp_infer", mlp_error(ctx));
            for (int64_t r = 0; r < count; r++) {
                const float *z = logits + r * 10;
                int best = 0;
                for (int c = 1; c < 10; c++) if (z[c] > z[best]) best = c;
                double top = z[best], sum = 0.0;
                for (int c = 0; c < 10; c++) sum += exp(z[c] - top);
                test_loss += log(sum) + top - z[y[r]]; /* -log softmax(z)[label] */
                correct += best == y[r];
            }
        }
        printf("epoch %d: seconds %.4f  train_loss %.4f  test_loss %.4f  test_accuracy %.4f\n", epoch,
               seconds, loss / (double)steps, test_loss / (double)xte.n, (double)correct / (double)xte.n);
    }
    printf("rank %d: params hash %016llx\n", rank, (unsigned long long)params_hash(ctx));
    mlp_destroy(ctx);
    free(order);
    free(xtr.data); free(ytr.data); free(xte.data); free(yte.data);
#ifdef GRAPHC_MPI
    MPI_Finalize();
#endif
    return 0;
}
