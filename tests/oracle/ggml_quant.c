// Independent oracle: quantize with ggml itself (ggml_quantize_chunk, built from llama.cpp's
// sources by .ci/run) and dequantize with ggml's own to_float.
//
//   ggml-quant TYPE_NAME N_PER_ROW IN.f32 OUT.q OUT.deq.f32 [IMATRIX.f32]
#include "ggml.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    *n = (size_t) ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(*n ? *n : 1);
    if (fread(buf, 1, *n, f) != *n) { perror(path); exit(2); }
    fclose(f);
    return buf;
}

static void spill(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, n, f) != n) { perror(path); exit(2); }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s TYPE N_PER_ROW IN.f32 OUT.q OUT.deq.f32 [IMATRIX.f32]\n", argv[0]);
        return 2;
    }
    enum ggml_type type = GGML_TYPE_COUNT;
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char *name = ggml_type_name((enum ggml_type) t);
        if (name && strcasecmp(name, argv[1]) == 0) { type = (enum ggml_type) t; break; }
    }
    if (type == GGML_TYPE_COUNT) { fprintf(stderr, "unknown type %s\n", argv[1]); return 2; }
    const int64_t n_per_row = atoll(argv[2]);
    size_t nbytes;
    float *src = slurp(argv[3], &nbytes);
    const int64_t n = (int64_t)(nbytes / sizeof(float));
    const int64_t nrows = n / n_per_row;
    const float *imatrix = NULL;
    if (argc > 6) { size_t ni; imatrix = slurp(argv[6], &ni); }
    const size_t row_size = ggml_row_size(type, n_per_row);
    void *dst = malloc(row_size * nrows);
    ggml_quantize_init(type);
    size_t written = ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix);
    spill(argv[4], dst, written);
    float *deq = malloc(n * sizeof(float));
    ggml_get_type_traits(type)->to_float(dst, deq, n);
    spill(argv[5], deq, n * sizeof(float));
    return 0;
}
