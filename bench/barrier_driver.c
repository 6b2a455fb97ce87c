/* barrier_driver.c -- the C side of bench/barrier.py: what one persist barrier costs on
 * this CPU, with no allocator or log around it.
 *
 * One barrier = store 8 bytes into each of `lines` cache lines, write each line back
 * (mode), then one SFENCE: the shape of a pmstore barrier on the flush backend (a commit
 * makes 3 lines durable: its lane's, and the two words its previous commit applied).
 * Each thread has its own 4 MiB of a MAP_SHARED file (give it one on /dev/shm).
 *
 * Modes: clwb, clflushopt (write back with CLWB / CLFLUSHOPT), nt (MOVNTI stores: no
 * write-back instruction), store (stores and SFENCE only: the floor without persistence).
 * Placement: hot (the same lines every barrier, as a lane's header), spread (each
 * barrier's lines 4160 bytes past the last ones, cycling through the 4 MiB).
 *
 * Usage: driver key=value ... ; prints one JSON object per (threads, mode, placement,
 * lines) on stdout. Keys: path=FILE threads=1,16 modes=clwb,nt lines=1,2,3,4
 * placements=hot,spread runs=N duration=S. A mode the CPU lacks is reported as
 * {"skipped": mode}. Exit status 0, or 2 (bad arguments or the file).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <fcntl.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define REGION_SIZE (4u << 20)  /* per thread */
#define SPREAD_STEP 4160        /* a page and a line: a new line and a new page each time */
#define MAX_THREADS 256
#define MAX_LINES 16

enum mode { M_CLWB, M_CLFLUSHOPT, M_NT, M_STORE, M_COUNT };
static const char *mode_name[M_COUNT] = {"clwb", "clflushopt", "nt", "store"};

struct list { int v[64]; int n; };
static struct {
    const char *path;
    struct list threads, lines, modes, placements;    /* placements: 1 hot, 0 spread */
    int runs;
    double duration_s;
} opt = {.runs = 3, .duration_s = 0.3};

struct job { uint8_t *region; enum mode mode; int hot, lines; double end; uint64_t barriers; };

static void die(const char *msg) { fprintf(stderr, "barrier_driver: %s\n", msg); exit(2); }

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int lookup(const char *s, const char **names, int count) {
    for (int i = 0; i < count; i++) if (!strcmp(s, names[i])) return i;
    die("unknown mode or placement (modes: clwb clflushopt nt store; placements: hot spread)");
    return -1;
}

static void parse_list(struct list *l, const char *v, const char **names, int count) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", v);
    l->n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && l->n < 64; tok = strtok_r(NULL, ",", &save))
        l->v[l->n++] = names ? lookup(tok, names, count) : atoi(tok);
}

static int supported(enum mode m) {
    unsigned a, b = 0, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) b = 0;
    if (m == M_CLWB) return (b >> 24) & 1;
    if (m == M_CLFLUSHOPT) return (b >> 23) & 1;
    return 1;
}

/* one thread's barriers until the deadline: the timed loop, checked every 256 barriers */
__attribute__((target("clwb,clflushopt"))) static void *worker(void *arg) {
    struct job *j = arg;
    uint64_t n = 0, pos = 0;
    do {
        for (int r = 0; r < 256; r++, n++) {
            for (int k = 0; k < j->lines; k++) {
                uint64_t off = j->hot ? (uint64_t)k * 4096 : (pos = (pos + SPREAD_STEP) % (REGION_SIZE - 64));
                long long *w = (long long *)(j->region + (off & ~63ull));
                switch (j->mode) {
                case M_CLWB: *w = (long long)n; _mm_clwb(w); break;
                case M_CLFLUSHOPT: *w = (long long)n; _mm_clflushopt(w); break;
                case M_NT: _mm_stream_si64(w, (long long)n); break;
                default: *(volatile long long *)w = (long long)n; break;
                }
            }
            _mm_sfence();
        }
    } while (now_s() < j->end);
    j->barriers = n;
    return NULL;
}

int main(int argc, char **argv) {
    static const char *placement_names[] = {"spread", "hot"};
    parse_list(&opt.threads, "1", NULL, 0);
    parse_list(&opt.lines, "1,2,3,4", NULL, 0);
    parse_list(&opt.modes, "clwb,nt", mode_name, M_COUNT);
    parse_list(&opt.placements, "hot,spread", placement_names, 2);
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) die("arguments are key=value");
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "path")) opt.path = v;
        else if (!strcmp(k, "threads")) parse_list(&opt.threads, v, NULL, 0);
        else if (!strcmp(k, "lines")) parse_list(&opt.lines, v, NULL, 0);
        else if (!strcmp(k, "modes")) parse_list(&opt.modes, v, mode_name, M_COUNT);
        else if (!strcmp(k, "placements")) parse_list(&opt.placements, v, placement_names, 2);
        else if (!strcmp(k, "runs")) opt.runs = atoi(v);
        else if (!strcmp(k, "duration")) opt.duration_s = atof(v);
        else die("unknown key");
    }
    int max_threads = 0;
    for (int i = 0; i < opt.threads.n; i++) {
        if (opt.threads.v[i] < 1 || opt.threads.v[i] > MAX_THREADS) die("threads must be 1..256");
        if (opt.threads.v[i] > max_threads) max_threads = opt.threads.v[i];
    }
    for (int i = 0; i < opt.lines.n; i++)
        if (opt.lines.v[i] < 1 || opt.lines.v[i] > MAX_LINES) die("lines must be 1..16");
    if (!opt.path || opt.runs < 1 || opt.duration_s <= 0) die("need path=, runs >= 1, duration > 0");

    size_t size = (size_t)max_threads * REGION_SIZE;
    int fd = open(opt.path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, (off_t)size)) die("cannot create the file");
    uint8_t *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) die("cannot map the file");
    memset(base, 1, size);     /* every page faulted in before the clock */

    for (int ti = 0; ti < opt.threads.n; ti++)
    for (int mi = 0; mi < opt.modes.n; mi++) {
        enum mode m = (enum mode)opt.modes.v[mi];
        if (!supported(m)) { printf("{\"skipped\": \"%s\"}\n", mode_name[m]); continue; }
        for (int pi = 0; pi < opt.placements.n; pi++)
        for (int li = 0; li < opt.lines.n; li++) {
            int threads = opt.threads.v[ti];
            printf("{\"threads\": %d, \"mode\": \"%s\", \"placement\": \"%s\", \"lines\": %d, \"barriers_per_s\": [",
                   threads, mode_name[m], placement_names[opt.placements.v[pi]], opt.lines.v[li]);
            for (int r = 0; r < opt.runs; r++) {
                struct job jobs[MAX_THREADS];
                pthread_t tids[MAX_THREADS];
                double t0 = now_s();
                for (int i = 0; i < threads; i++) {
                    jobs[i] = (struct job){base + (size_t)i * REGION_SIZE, m, opt.placements.v[pi], opt.lines.v[li],
                                           t0 + opt.duration_s, 0};
                    if (pthread_create(&tids[i], NULL, worker, &jobs[i])) die("pthread_create failed");
                }
                uint64_t total = 0;
                for (int i = 0; i < threads; i++) { pthread_join(tids[i], NULL); total += jobs[i].barriers; }
                printf("%s%.1f", r ? ", " : "", total / (now_s() - t0));
            }
            printf("]}\n");
            fflush(stdout);
        }
    }
    munmap(base, size);
    close(fd);
    unlink(opt.path);
    return 0;
}
