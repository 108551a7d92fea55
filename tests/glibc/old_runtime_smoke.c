/* Loads libtorchspark.so the way the Python and JVM loaders do (libc10, libtorch_cpu first,
 * then the library) and scores PNGs through the C ABI: built to run under another glibc's
 * dynamic linker (an older distribution's runtime libraries), where the shipped library must
 * still load. Prints one line per image: "<argmax> <probability[argmax]>".
 *
 * Linked with rust/ffi/compat/glibc_2_28.c (tests/python/test_glibc_floor.py builds it).
 *
 * usage: old_runtime_smoke TORCH_LIB_DIR LIBTORCHSPARK MODEL PNG...
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ArrowSchema {
    const char *format, *name, *metadata;
    int64_t flags, n_children;
    struct ArrowSchema **children, *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};
struct ArrowArray {
    int64_t length, null_count, offset, n_buffers, n_children;
    const void **buffers;
    struct ArrowArray **children, *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

/* Its own start-up too: crt1.o calls __libc_start_main, GLIBC_2.34 on the build machine. */
__asm__(".symver ts_old_libc_start_main, __libc_start_main@GLIBC_2.2.5\n"
        ".globl __libc_start_main\n.hidden __libc_start_main\n"
        "__libc_start_main:\n\tjmp ts_old_libc_start_main@PLT\n");

static void release_schema(struct ArrowSchema *s) { s->release = NULL; }
static void release_array(struct ArrowArray *a) { a->release = NULL; }

static void *need(void *p, const char *what) {
    if (!p) {
        fprintf(stderr, "%s: %s\n", what, dlerror());
        exit(2);
    }
    return p;
}

static char *slurp(const char *path, int32_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n > 0 ? n : 1);
    if (!buf || fread(buf, 1, n, f) != (size_t)n) exit(2);
    fclose(f);
    *len = (int32_t)n;
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s TORCH_LIB_DIR LIBTORCHSPARK MODEL PNG...\n", argv[0]);
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/libc10.so", argv[1]);
    need(dlopen(path, RTLD_NOW | RTLD_GLOBAL), path);
    snprintf(path, sizeof path, "%s/libtorch_cpu.so", argv[1]);
    need(dlopen(path, RTLD_NOW | RTLD_GLOBAL), path);
    void *so = need(dlopen(argv[2], RTLD_NOW), argv[2]);

    const char *(*version)(void) = need(dlsym(so, "ts_version"), "ts_version");
    int (*open_)(const char *, uint64_t *, char **) = need(dlsym(so, "ts_open"), "ts_open");
    int (*score)(uint64_t, const char *, struct ArrowArray *, struct ArrowSchema *,
                 struct ArrowArray *, struct ArrowSchema *, char **) =
        need(dlsym(so, "ts_score"), "ts_score");
    printf("version %s\n", version());

    char config[8192];
    snprintf(config, sizeof config, "{\"model_path\": \"%s\", \"num_threads\": 1}", argv[3]);
    uint64_t handle = 0;
    char *err = NULL;
    if (open_(config, &handle, &err)) {
        fprintf(stderr, "ts_open: %s\n", err ? err : "?");
        return 1;
    }

    /* One struct column `content` (binary): the PNGs' bytes. */
    int n = argc - 4;
    int32_t *offsets = calloc(n + 1, sizeof *offsets);
    size_t total = 0;
    char **files = calloc(n, sizeof *files);
    int32_t *lens = calloc(n, sizeof *lens);
    for (int i = 0; i < n; i++) {
        files[i] = slurp(argv[4 + i], &lens[i]);
        total += lens[i];
    }
    char *data = malloc(total ? total : 1);
    for (int i = 0; i < n; i++) {
        memcpy(data + offsets[i], files[i], lens[i]);
        offsets[i + 1] = offsets[i] + lens[i];
    }
    const void *child_bufs[3] = {NULL, offsets, data};
    struct ArrowArray child = {n, 0, 0, 3, 0, child_bufs, NULL, NULL, release_array, NULL};
    struct ArrowArray *children[1] = {&child};
    const void *root_bufs[1] = {NULL};
    struct ArrowArray root = {n, 0, 0, 1, 1, root_bufs, children, NULL, release_array, NULL};
    struct ArrowSchema child_s = {"z", "content", NULL, 2, 0, NULL, NULL, release_schema, NULL};
    struct ArrowSchema *child_ss[1] = {&child_s};
    struct ArrowSchema root_s = {"+s", "", NULL, 0, 1, child_ss, NULL, release_schema, NULL};

    struct ArrowArray out;
    struct ArrowSchema out_s;
    if (score(handle, "{}", &root, &root_s, &out, &out_s, &err)) {
        fprintf(stderr, "ts_score: %s\n", err ? err : "?");
        return 1;
    }
    /* `probability`: a list (or fixed-size list) of float32 per row. */
    for (int64_t c = 0; c < out_s.n_children; c++) {
        if (strcmp(out_s.children[c]->name, "probability")) continue;
        struct ArrowArray *list = out.children[c];
        const char *fmt = out_s.children[c]->format;
        struct ArrowArray *values = list->children[0];
        const float *v = (const float *)values->buffers[1] + values->offset;
        for (int64_t r = 0; r < list->length; r++) {
            int64_t lo, hi;
            if (fmt[0] == '+' && fmt[1] == 'w') {
                int64_t w = atoll(fmt + 3);
                lo = (list->offset + r) * w;
                hi = lo + w;
            } else {
                const int32_t *o = (const int32_t *)list->buffers[1] + list->offset;
                lo = o[r];
                hi = o[r + 1];
            }
            int64_t best = lo;
            for (int64_t k = lo; k < hi; k++)
                if (v[k] > v[best]) best = k;
            printf("%lld %.6f\n", (long long)(best - lo), v[best]);
        }
    }
    out.release(&out);
    out_s.release(&out_s);
    return 0;
}
