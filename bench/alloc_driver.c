/* alloc_driver.c -- the C side of bench/alloc.py: one allocator, one workload, timed.
 *
 * Built by bench/alloc.py at run time into a temp dir, once per system, with one of
 *   -DSYS_PMSTORE  (with allocator/csrc/ *.c)    pm_alloc_into / pm_free_from
 *   -DSYS_PMDK     (-lpmemobj)                       pmemobj_alloc / pmemobj_free
 *   -DSYS_GLIBC                                      malloc / free
 *   -DSYS_MIMALLOC (-lmimalloc)                      mi_malloc / mi_free
 * Every allocation is published into a slot: a word inside the heap (pmstore: the
 * allocation and its publish are one redo commit), a PMEMoid inside the pool's root
 * object (PMDK's oid-in-pool atomic API), or a DRAM array (malloc; this also keeps the
 * compiler from eliding malloc/free pairs). One op = one alloc + one free.
 *
 * Workloads (per thread, each thread on its own slots):
 *   w1 -- alloc+free pairs into one slot, sizes uniform in [min_size, max_size];
 *   w2 -- allocate `objects` objects (sizes as above) into slots 0..n-1, free them in a
 *         random order, repeat (W2 and W3 differ only in objects and sizes).
 * Runs are bounded by time; a run may stop mid-cycle, so pairs = (allocs + frees) / 2,
 * and the objects still live are freed after the clock stops (untimed, uncounted).
 * Sizes and free orders are drawn before the clock starts.
 *
 * Usage: driver key=value ... ; prints one JSON object per thread count on stdout.
 * Keys: workload=w1|w2 threads=1,2 runs=N duration=S warmup=S warmup_cycles=N
 *   objects=N min_size=B max_size=B seed=N space=0|1
 *   path=FILE (pmstore, pmdk) pool_size=B (pmdk)
 *   backend=1|2|3 file_size= max_size_heap= redo_off= lane_count= lane_size= meta_off=
 *   data_off= slot_off= (pmstore: the geometry from the header bench/alloc.py read)
 * Exit status 0, or 2 (bad arguments), 3 (an allocator call failed; message on stderr).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(SYS_PMSTORE)
#include "pm_api.h"
#define SYSTEM_NAME "pmstore"
#elif defined(SYS_PMDK)
#include <libpmemobj.h>
#define SYSTEM_NAME "pmdk"
#elif defined(SYS_MIMALLOC)
#include <mimalloc.h>
#define SYSTEM_NAME "mimalloc"
#elif defined(SYS_GLIBC)
#define SYSTEM_NAME "glibc"
#else
#error "define one of SYS_PMSTORE, SYS_PMDK, SYS_GLIBC, SYS_MIMALLOC"
#endif

#define MAX_THREADS 256
#define PERM_COUNT 4            /* free orders per thread, used in turn */
#define W1_SIZE_COUNT 4096      /* sizes cycled by w1 (a power of two) */
#define SLOT_STRIDE 8           /* w1: slots of different threads one cache line apart */
#define CHUNK_MAX 1024          /* ops between clock reads, at most */
#define CHUNK_TARGET_NS 20000   /* grow the chunk while one takes less than this */

static void die(const char *what) {
    fprintf(stderr, "alloc_driver (" SYSTEM_NAME "): %s\n", what);
    exit(3);
}

/* ------------------------------------------------------------------ msync counter
 * The driver defines msync itself, so pmstore's pmem.c (linked in) and PMDK's libpmem
 * (bound to the executable's symbol: built with -rdynamic) call this one: a cheap count
 * of the system calls behind persist barriers on a file-backed heap. */
static atomic_uint_fast64_t msync_count;

int msync(void *addr, size_t len, int flags) {
    atomic_fetch_add_explicit(&msync_count, 1, memory_order_relaxed);
    return (int)syscall(SYS_msync, addr, len, flags);
}

/* ------------------------------------------------------------------ options */
static struct {
    const char *workload, *path;
    int threads[MAX_THREADS], thread_kinds;
    int runs, warmup_cycles, space;
    double duration_s, warmup_s;
    uint64_t objects, min_size, max_size, seed, pool_size;
    /* pmstore geometry */
    int backend;
    uint64_t file_size, heap_max_size, redo_off, lane_count, lane_size, meta_off, data_off, slot_off;
} opt = {.workload = "w1", .runs = 3, .duration_s = 0.25, .warmup_s = 0.05, .objects = 1,
         .min_size = 16, .max_size = 1024, .seed = 1, .backend = 2};

static uint64_t num(const char *k, const char *v) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 0);
    if (errno || *end || !*v) { fprintf(stderr, "alloc_driver: bad number for %s: %s\n", k, v); exit(2); }
    return x;
}

static void parse(int argc, char **argv) {
    opt.threads[0] = 1; opt.thread_kinds = 1;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) { fprintf(stderr, "alloc_driver: expected key=value, got %s\n", argv[i]); exit(2); }
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "workload")) opt.workload = v;
        else if (!strcmp(k, "path")) opt.path = v;
        else if (!strcmp(k, "threads")) {
            opt.thread_kinds = 0;
            for (char *s = (char *)v, *tok; (tok = strsep(&s, ",")) && opt.thread_kinds < MAX_THREADS;) {
                uint64_t t = num(k, tok);
                if (t < 1 || t > MAX_THREADS) { fprintf(stderr, "alloc_driver: threads 1..%d\n", MAX_THREADS); exit(2); }
                opt.threads[opt.thread_kinds++] = (int)t;
            }
        }
        else if (!strcmp(k, "runs")) opt.runs = (int)num(k, v);
        else if (!strcmp(k, "duration")) opt.duration_s = atof(v);
        else if (!strcmp(k, "warmup")) opt.warmup_s = atof(v);
        else if (!strcmp(k, "warmup_cycles")) opt.warmup_cycles = (int)num(k, v);
        else if (!strcmp(k, "space")) opt.space = (int)num(k, v);
        else if (!strcmp(k, "objects")) opt.objects = num(k, v);
        else if (!strcmp(k, "min_size")) opt.min_size = num(k, v);
        else if (!strcmp(k, "max_size")) opt.max_size = num(k, v);
        else if (!strcmp(k, "seed")) opt.seed = num(k, v);
        else if (!strcmp(k, "pool_size")) opt.pool_size = num(k, v);
        else if (!strcmp(k, "backend")) opt.backend = (int)num(k, v);
        else if (!strcmp(k, "file_size")) opt.file_size = num(k, v);
        else if (!strcmp(k, "max_size_heap")) opt.heap_max_size = num(k, v);
        else if (!strcmp(k, "redo_off")) opt.redo_off = num(k, v);
        else if (!strcmp(k, "lane_count")) opt.lane_count = num(k, v);
        else if (!strcmp(k, "lane_size")) opt.lane_size = num(k, v);
        else if (!strcmp(k, "meta_off")) opt.meta_off = num(k, v);
        else if (!strcmp(k, "data_off")) opt.data_off = num(k, v);
        else if (!strcmp(k, "slot_off")) opt.slot_off = num(k, v);
        else { fprintf(stderr, "alloc_driver: unknown key %s\n", k); exit(2); }
    }
    if (strcmp(opt.workload, "w1") && strcmp(opt.workload, "w2")) { fprintf(stderr, "alloc_driver: workload w1|w2\n"); exit(2); }
    if (!strcmp(opt.workload, "w1")) opt.objects = 1;
    if (opt.runs < 1 || opt.duration_s <= 0 || opt.objects < 1 || opt.objects > 0xFFFFFFFFull ||
        opt.min_size < 1 || opt.max_size < opt.min_size) { fprintf(stderr, "alloc_driver: bad options\n"); exit(2); }
}

/* ------------------------------------------------------------------ the system under test */
__attribute__((unused)) static int max_threads(void) {
    int m = 1;
    for (int i = 0; i < opt.thread_kinds; i++) if (opt.threads[i] > m) m = opt.threads[i];
    return m;
}

/* slots per thread: w1 uses one, a cache line away from the next thread's */
static uint64_t slots_per_thread(void) { return opt.objects < SLOT_STRIDE ? SLOT_STRIDE : opt.objects; }

#if defined(SYS_PMSTORE)
static pm_heap *heap;
static uint64_t slot_base_off;

static void sys_open(void) {
    int fd = open(opt.path, O_RDWR);
    if (fd < 0) die("cannot open the heap file");
    if (pm_heap_map(fd, opt.file_size, opt.heap_max_size, opt.backend, &heap)) die("pm_heap_map failed");
    if (pm_redo_init(heap, opt.redo_off, (uint32_t)opt.lane_count, (uint32_t)opt.lane_size)) die("pm_redo_init failed");
    struct pm_recover_report rr;
    if (pm_redo_recover(heap, &rr)) die("pm_redo_recover failed");
    struct pm_scan_report sr;
    int rc = pm_alloc_init(heap, opt.meta_off, opt.data_off, (opt.heap_max_size - opt.data_off) / PMD_PAGE_SIZE, &sr);
    if (rc) die("pm_alloc_init failed");
    slot_base_off = opt.slot_off;
}

static void alloc_fail(int64_t rc) {
    char msg[160];
    snprintf(msg, sizeof msg, rc == PM_E_NEED_GROW ? "pm_alloc_into: PM_E_NEED_GROW (the bench sized the heap too "
             "small; it must never grow)" : "pm_alloc_into failed with code %lld", (long long)rc);
    die(msg);
}

static inline void sys_alloc(uint64_t slot, uint64_t size) {
    int64_t rc = pm_alloc_into(heap, slot_base_off + 8 * slot, size);
    if (__builtin_expect(rc < 0, 0)) alloc_fail(rc);
}
static inline void sys_free(uint64_t slot) {
    if (__builtin_expect(pm_free_from(heap, slot_base_off + 8 * slot) != 0, 0)) die("pm_free_from failed");
}
static uint64_t sys_persists(void) { return pm_persist_count(heap); }
static const char *sys_served_by(void) { return "pmstore allocator/csrc (static)"; }

#elif defined(SYS_PMDK)
static PMEMobjpool *pool;
static PMEMoid *oid_slots;

static void sys_open(void) {
    pool = pmemobj_create(opt.path, "pmstore-bench-alloc", opt.pool_size, 0600);
    if (!pool) { fprintf(stderr, "alloc_driver (pmdk): pmemobj_create: %s\n", pmemobj_errormsg()); exit(3); }
    uint64_t n = (uint64_t)max_threads() * slots_per_thread();
    PMEMoid root = pmemobj_root(pool, n * sizeof(PMEMoid));
    if (OID_IS_NULL(root)) { fprintf(stderr, "alloc_driver (pmdk): pmemobj_root: %s\n", pmemobj_errormsg()); exit(3); }
    oid_slots = pmemobj_direct(root);
}
static inline void sys_alloc(uint64_t slot, uint64_t size) {
    if (__builtin_expect(pmemobj_alloc(pool, &oid_slots[slot], size, 0, NULL, NULL) != 0, 0)) {
        fprintf(stderr, "alloc_driver (pmdk): pmemobj_alloc(%llu): %s\n", (unsigned long long)size, pmemobj_errormsg());
        exit(3);
    }
}
static inline void sys_free(uint64_t slot) { pmemobj_free(&oid_slots[slot]); }
static uint64_t sys_persists(void) { return 0; }
static const char *sys_served_by(void) {
    Dl_info info;
    return dladdr((void *)pmemobj_alloc, &info) && info.dli_fname ? info.dli_fname : "?";
}

#else   /* volatile ceilings */
static void **ptr_slots;

#if defined(SYS_MIMALLOC)
#define VMALLOC mi_malloc
#define VFREE mi_free
#else
#define VMALLOC malloc
#define VFREE free
#endif

static void sys_open(void) {
    ptr_slots = calloc((size_t)max_threads() * slots_per_thread(), sizeof *ptr_slots);
    if (!ptr_slots) die("out of memory for the slot array");
}
static inline void sys_alloc(uint64_t slot, uint64_t size) {
    void *p = VMALLOC(size);
    if (__builtin_expect(!p, 0)) die("out of memory");
    ptr_slots[slot] = p;
    __asm__ volatile("" : : "r"(p) : "memory");
}
static inline void sys_free(uint64_t slot) { VFREE(ptr_slots[slot]); }
static uint64_t sys_persists(void) { return 0; }

/* sys_served_by -- the shared object that holds the function we call, checked on a real
 * allocation: mimalloc must own the block (mi_is_in_heap_region, mi_usable_size). */
static const char *sys_served_by(void) {
    static char buf[512];
    Dl_info info;
    const char *lib = dladdr((void *)VMALLOC, &info) && info.dli_fname ? info.dli_fname : "?";
#if defined(SYS_MIMALLOC)
    void *p = mi_malloc(100);
    int owned = mi_is_in_heap_region(p) && mi_usable_size(p) >= 100;
    mi_free(p);
    if (!strstr(lib, "mimalloc") || !owned) die("mi_malloc was not served by libmimalloc");
    snprintf(buf, sizeof buf, "%s (mimalloc %d)", lib, mi_version());
#else
    if (!strstr(lib, "libc.so")) {
        snprintf(buf, sizeof buf, "malloc resolves to %s, not glibc (LD_PRELOAD?)", lib);
        die(buf);
    }
    snprintf(buf, sizeof buf, "%s", lib);
#endif
    return buf;
}
#endif

/* ------------------------------------------------------------------ per-thread work */
static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct worker {
    int idx;
    uint64_t slot0;             /* first slot of this thread */
    uint32_t *sizes;            /* w1: W1_SIZE_COUNT sizes; w2: one size per object */
    uint32_t *perm[PERM_COUNT]; /* w2: free orders */
    uint64_t pos, cycle;        /* w2: op index within the cycle (0..2n-1), cycles done */
    uint64_t w1_next;           /* w1: next size index */
    uint64_t start_ns, stop_ns, ops;   /* last run: ops = pairs (w1) or single allocs/frees (w2) */
};

static struct worker workers[MAX_THREADS];
static pthread_barrier_t gate;
static int active_threads;

static void worker_prepare(struct worker *w, int idx) {
    uint64_t n = opt.objects, s = opt.seed * 1000003ull + (uint64_t)idx, span = opt.max_size - opt.min_size + 1;
    uint64_t count = strcmp(opt.workload, "w1") ? n : W1_SIZE_COUNT;
    memset(w, 0, sizeof *w);
    w->idx = idx;
    w->slot0 = (uint64_t)idx * slots_per_thread();
    w->sizes = malloc(count * sizeof *w->sizes);
    if (!w->sizes) die("out of memory");
    for (uint64_t i = 0; i < count; i++) w->sizes[i] = (uint32_t)(opt.min_size + splitmix(&s) % span);
    if (!strcmp(opt.workload, "w1")) return;
    for (int k = 0; k < PERM_COUNT; k++) {
        uint32_t *p = w->perm[k] = malloc(n * sizeof *p);
        if (!p) die("out of memory");
        for (uint64_t i = 0; i < n; i++) p[i] = (uint32_t)i;
        for (uint64_t i = n - 1; i > 0; i--) {       /* Fisher-Yates */
            uint64_t j = splitmix(&s) % (i + 1);
            uint32_t t = p[i]; p[i] = p[j]; p[j] = t;
        }
    }
}

static void worker_release(struct worker *w) {
    free(w->sizes);
    for (int k = 0; k < PERM_COUNT; k++) free(w->perm[k]);
}

/* one op of the w2 cycle: allocate object pos, or free the (pos-n)-th of this cycle's order */
static inline void w2_step(struct worker *w) {
    uint64_t n = opt.objects;
    if (w->pos < n) sys_alloc(w->slot0 + w->pos, w->sizes[w->pos]);
    else sys_free(w->slot0 + w->perm[w->cycle % PERM_COUNT][w->pos - n]);
    if (++w->pos == 2 * n) { w->pos = 0; w->cycle++; }
}

/* w2_cleanup -- free what a run stopped mid-cycle left allocated; the next run starts a cycle. */
static void w2_cleanup(struct worker *w) {
    uint64_t n = opt.objects;
    if (w->pos == 0) return;
    if (w->pos < n) {                   /* stopped while allocating: free objects 0..pos-1 */
        for (uint64_t i = 0; i < w->pos; i++) sys_free(w->slot0 + i);
        w->pos = 0;
        w->cycle++;
        return;
    }
    while (w->pos != 0) w2_step(w);     /* stopped while freeing: finish this cycle's frees */
}

/* run_for -- ops until duration_ns has passed; the clock is read once per chunk. */
static void run_for(struct worker *w, uint64_t duration_ns) {
    int w1 = !strcmp(opt.workload, "w1");
    uint64_t chunk = 1, ops = 0, start = now_ns(), last = start, deadline = start + duration_ns;
    uint64_t slot = w->slot0;
    for (;;) {
        if (w1) {
            for (uint64_t k = 0; k < chunk; k++) {
                sys_alloc(slot, w->sizes[w->w1_next++ & (W1_SIZE_COUNT - 1)]);
                sys_free(slot);
            }
        } else {
            for (uint64_t k = 0; k < chunk; k++) w2_step(w);
        }
        ops += chunk;
        uint64_t t = now_ns();
        if (t >= deadline) { last = t; break; }
        if (t - last < CHUNK_TARGET_NS && chunk < CHUNK_MAX) chunk *= 2;
        last = t;
    }
    w->start_ns = start;
    w->stop_ns = last;
    w->ops = ops;
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    int w1 = !strcmp(opt.workload, "w1");
    if (!w1)    /* warm-up cycles: fault the pages in and build the runs, untimed */
        for (int c = 0; c < opt.warmup_cycles; c++)
            for (uint64_t i = 0; i < 2 * opt.objects; i++) w2_step(w);
    if (opt.warmup_s > 0) { run_for(w, (uint64_t)(opt.warmup_s * 1e9)); if (!w1) w2_cleanup(w); }
    pthread_barrier_wait(&gate);                /* all warmed up */
    for (int r = 0; r < opt.runs; r++) {
        pthread_barrier_wait(&gate);            /* go */
        run_for(w, (uint64_t)(opt.duration_s * 1e9));
        pthread_barrier_wait(&gate);            /* all stopped: main reads the counters */
        if (!w1) w2_cleanup(w);
        pthread_barrier_wait(&gate);            /* all clean */
    }
    return NULL;
}

/* ------------------------------------------------------------------ space (pmstore, w2) */
#if defined(SYS_PMSTORE)
struct space { uint64_t used_bytes, requested_bytes, block_bytes; };

static void *space_main(void *arg) {
    struct space *sp = arg;
    struct pm_alloc_stats st0, st1;
    static struct pm_class_stats cls[PMD_CLASS_COUNT];
    struct worker w;
    worker_prepare(&w, 0);
    if (pm_alloc_stats(heap, &st0, cls)) die("pm_alloc_stats failed");
    uint64_t requested = 0;
    for (uint64_t i = 0; i < opt.objects; i++) { sys_alloc(i, w.sizes[i]); requested += w.sizes[i]; }
    if (pm_alloc_stats(heap, &st1, cls)) die("pm_alloc_stats failed");
    for (uint64_t i = 0; i < opt.objects; i++) sys_free(i);
    /* every page the heap holds at the peak, runs and spans, less the spans already there
     * (the slot table): on the fresh heap bench/alloc.py makes, exactly the objects' cost */
    sp->used_bytes = (st1.run_pages + st1.span_pages - st0.span_pages) * PMD_PAGE_SIZE;
    sp->block_bytes = st1.live_block_bytes - st0.live_block_bytes;
    sp->requested_bytes = requested;
    worker_release(&w);
    return NULL;    /* thread exit hands its runs to the class pools */
}
#endif

/* ------------------------------------------------------------------ main */
static void print_list_d(const char *key, const double *v, int n) {
    printf(", \"%s\": [", key);
    for (int i = 0; i < n; i++) printf("%s%.6g", i ? ", " : "", v[i]);
    printf("]");
}
static void print_list_u(const char *key, const uint64_t *v, int n) {
    printf(", \"%s\": [", key);
    for (int i = 0; i < n; i++) printf("%s%llu", i ? ", " : "", (unsigned long long)v[i]);
    printf("]");
}

int main(int argc, char **argv) {
    parse(argc, argv);
    sys_open();
    const char *served_by = sys_served_by();
    char space_json[256] = "";
#if defined(SYS_PMSTORE)
    if (opt.space && strcmp(opt.workload, "w1")) {
        struct space sp;
        pthread_t t;
        if (pthread_create(&t, NULL, space_main, &sp)) die("pthread_create failed");
        pthread_join(t, NULL);
        snprintf(space_json, sizeof space_json, ", \"space_used_bytes\": %llu, \"space_requested_bytes\": %llu, "
                 "\"space_block_bytes\": %llu", (unsigned long long)sp.used_bytes,
                 (unsigned long long)sp.requested_bytes, (unsigned long long)sp.block_bytes);
    }
#endif
    double *ops_per_s = calloc(opt.runs, sizeof *ops_per_s), *elapsed = calloc(opt.runs, sizeof *elapsed);
    uint64_t *pairs2 = calloc(opt.runs, sizeof *pairs2), *persists = calloc(opt.runs, sizeof *persists);
    uint64_t *msyncs = calloc(opt.runs, sizeof *msyncs);
    if (!ops_per_s || !elapsed || !pairs2 || !persists || !msyncs) die("out of memory");
    int w1 = !strcmp(opt.workload, "w1");
    for (int k = 0; k < opt.thread_kinds; k++) {
        int n = active_threads = opt.threads[k];
        pthread_t tids[MAX_THREADS];
        for (int i = 0; i < n; i++) worker_prepare(&workers[i], i);
        pthread_barrier_init(&gate, NULL, (unsigned)n + 1);
        for (int i = 0; i < n; i++)
            if (pthread_create(&tids[i], NULL, worker_main, &workers[i])) die("pthread_create failed");
        pthread_barrier_wait(&gate);            /* warmed up */
        for (int r = 0; r < opt.runs; r++) {
            uint64_t p0 = sys_persists(), m0 = atomic_load(&msync_count);
            pthread_barrier_wait(&gate);        /* go */
            pthread_barrier_wait(&gate);        /* stopped */
            persists[r] = sys_persists() - p0;
            msyncs[r] = atomic_load(&msync_count) - m0;
            uint64_t lo = UINT64_MAX, hi = 0, ops = 0;
            for (int i = 0; i < n; i++) {
                if (workers[i].start_ns < lo) lo = workers[i].start_ns;
                if (workers[i].stop_ns > hi) hi = workers[i].stop_ns;
                ops += workers[i].ops;
            }
            pairs2[r] = w1 ? 2 * ops : ops;     /* twice the pairs: allocs + frees */
            elapsed[r] = (double)(hi - lo) / 1e9;
            ops_per_s[r] = elapsed[r] > 0 ? (double)pairs2[r] / 2 / elapsed[r] : 0;
            pthread_barrier_wait(&gate);        /* clean */
        }
        for (int i = 0; i < n; i++) pthread_join(tids[i], NULL);
        pthread_barrier_destroy(&gate);
        for (int i = 0; i < n; i++) worker_release(&workers[i]);
        printf("{\"system\": \"%s\", \"threads\": %d, \"objects\": %llu, \"served_by\": \"%s\"", SYSTEM_NAME, n,
               (unsigned long long)opt.objects, served_by);
        print_list_d("ops_per_s", ops_per_s, opt.runs);
        print_list_d("elapsed_s", elapsed, opt.runs);
        print_list_u("allocs_plus_frees", pairs2, opt.runs);
        print_list_u("persists", persists, opt.runs);
        print_list_u("msyncs", msyncs, opt.runs);
        printf("%s}\n", space_json);
        fflush(stdout);
    }
#if defined(SYS_PMDK)
    pmemobj_close(pool);
#elif defined(SYS_PMSTORE)
    if (pm_redo_quiesce(heap)) die("pm_redo_quiesce failed");   /* the last commits' words durable, lanes empty */
    pm_heap_unmap(heap);
#endif
    return 0;
}
