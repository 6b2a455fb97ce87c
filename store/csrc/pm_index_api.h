/* pm_index_api.h -- the object index's functions Python calls (read by the cffi cdef).
 *
 * Concurrency: one writer at a time (a mutex inside the index; the GIL is released while
 * waiting); readers take no lock: they validate with a sequence counter the writer makes
 * odd while it changes the index, and retry. Values are copied with the GIL released.
 */
#ifndef PM_INDEX_API_H
#define PM_INDEX_API_H
#include <stdint.h>
#include "pm_api.h"
#include "pmd_store.h"

#define PM_E_NOT_FOUND -20      /* no such key */
#define PM_E_PRECONDITION -21   /* if_match / if_none_match failed */
#define PM_E_CORRUPT_OBJECT -22 /* a record or value fails its checksum */
#define PM_E_BUFFER -23         /* the caller's buffer is too small: info.value_size says how much */

#define PM_LIST_ENTRY_MAX 1319  /* bytes one listed object takes at most in pm_index_list's buffer */

#define PM_COND_NONE 0
#define PM_COND_ABSENT 1        /* if_none_match: the key must not exist */
#define PM_COND_ETAG 2          /* if_match: the current etag must equal */

typedef struct pm_index pm_index;

struct pm_obj_info {
    uint64_t rec_off;           /* the record */
    uint64_t value_off;         /* where the value bytes start */
    uint64_t value_size;
    uint64_t mtime_ns;
    uint32_t value_crc32c;
    uint32_t ctype_size;
    uint8_t  etag[16];
    uint8_t  ctype[256];
};

struct pm_index_report {
    uint64_t objects;           /* records on level 0 */
    uint64_t value_bytes;       /* sum of value sizes */
    uint64_t key_bytes;
    uint64_t upgraded_from;     /* 2: open raised a version-2 store to 3 (FORMAT.md 9); else 0 */
};

int pm_index_create(pm_heap *h, uint64_t *super_off);
int pm_index_open(pm_heap *h, uint64_t super_off, pm_index **out, struct pm_index_report *rep);
void pm_index_close(pm_index *x);
uint64_t pm_index_count(pm_index *x);
/* verify: PM_VERIFY_ALL checks every record and value (I2, I4); PM_VERIFY_SMALL only the
 * records of values up to PMD_OBJ_SMALL_MAX bytes, whose check comes with computing their
 * value's CRC32C for info (the default when verify_reads is off); PM_VERIFY_NONE nothing
 * (head: the metadata of a damaged object). */
#define PM_VERIFY_NONE -1
#define PM_VERIFY_SMALL 0
#define PM_VERIFY_ALL 1
int pm_index_get(pm_index *x, const uint8_t *key, uint32_t klen, uint64_t start, uint64_t limit, uint8_t *dst,
                 uint64_t cap, int verify, struct pm_obj_info *info);
/* The arguments of pm_index_get that a caller keeps from call to call (a per-thread
 * scratch): pm_index_read takes them by pointer, and the key NUL-terminated (a valid key
 * holds no NUL, I2; a Python bytes object ends in one), so the hot read crosses cffi with
 * three arguments instead of nine (each costs ~25 ns to convert). */
struct pm_read_req {
    uint8_t *dst;
    uint64_t cap;
    uint64_t start;
    uint64_t limit;
    struct pm_obj_info *info;
    uint32_t value_only;        /* 1: info's etag is left all zero where the record derives it */
    uint32_t reserved;          /* (FORMAT.md 4.7), which saves its MD5 (~200 ns at 100 bytes) */
};
/* pm_index_read: pm_index_get with req's arguments, verifying as pm_index_set_verify said
 * (default on). */
int pm_index_read(pm_index *x, const char *key, const struct pm_read_req *req);
void pm_index_set_verify(pm_index *x, int on);
/* Seed the tower-height generator (it is seeded from the clock at open): the crash tools
 * replay a workload from its seed alone, index shape included. Not a format matter. */
void pm_index_seed_heights(pm_index *x, uint64_t seed);
/* pm_index_put: etag NULL = MD5 of the value, computed here; mtime_ns 0 = now (CLOCK_REALTIME). */
int pm_index_put(pm_index *x, const uint8_t *key, uint32_t klen, const uint8_t *ctype, uint32_t ctlen,
                 const uint8_t *value, uint64_t vlen, const uint8_t *etag, uint64_t mtime_ns,
                 int cond, const uint8_t *match_etag, struct pm_obj_info *info, int *created);
/* pm_index_put_plain: pm_index_put with no content type, no condition, ETag and mtime
 * computed here, and key NUL-terminated (as pm_index_read): the common put crosses cffi
 * with five arguments instead of thirteen. Returns 1 created, 0 replaced, or PM_E_*. */
int pm_index_put_plain(pm_index *x, const char *key, const uint8_t *value, uint64_t vlen, struct pm_obj_info *info);
int pm_index_delete(pm_index *x, const uint8_t *key, uint32_t klen, int cond, const uint8_t *match_etag);
/* One operation of pm_index_apply. */
struct pm_index_op {
    const uint8_t *key;
    uint32_t klen;
    uint32_t kind;              /* 0 put, 1 delete */
    const uint8_t *ctype;
    uint32_t ctlen;
    int32_t cond;               /* PM_COND_* */
    const uint8_t *value;
    uint64_t vlen;
    const uint8_t *etag;        /* put: MD5 of the value */
    const uint8_t *match_etag;  /* cond == PM_COND_ETAG */
    uint64_t mtime_ns;
    int32_t result;             /* out: 1 created, 0 replaced/deleted, or a negative PM_E_* code */
    int32_t reserved;
};

int pm_index_apply(pm_index *x, struct pm_index_op *ops, uint32_t n, int atomic);
/* pm_index_submit: group commit -- op joins a queue; one waiting writer applies up to
 * `limit` queued ops (distinct keys) in one pm_index_apply. Returns op's result. */
int pm_index_submit(pm_index *x, struct pm_index_op *op, uint32_t limit);
/* Group commit on (limit > 0: the most ops one commit takes) or off (0). With it on, a
 * writer counts itself in and out (pm_index_put_plain does, in C); one that finds another
 * writer in shares a commit through pm_index_submit instead of committing alone. */
void pm_index_set_group(pm_index *x, uint32_t limit);
uint32_t pm_index_writer_enter(pm_index *x);   /* returns the writers that were in before */
void pm_index_writer_leave(pm_index *x);
/* ops queued for group commit and not yet taken into a group (the crash tools stage
 * groups with it: recovery/crashtest.py record_group) */
uint32_t pm_index_group_queued(pm_index *x);
int pm_index_list(pm_index *x, const uint8_t *after, uint32_t alen, const uint8_t *prefix, uint32_t plen,
                  uint32_t limit, uint8_t *buf, uint64_t cap, uint32_t *count);
#endif
