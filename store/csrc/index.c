/* index.c -- the object index: a persistent skip list of object records in the heap,
 * a DRAM hash for point lookups, one writer at a time, lock-free readers.
 *
 * FORMAT.md 4.6-4.7, 7.9; invariants I1-I4. Every change (insert, replace, delete) is
 * one redo commit that also allocates the new record (and value block) and frees the
 * old ones, with the new bytes persisted by the commit-point barrier: a crash leaves
 * the old object or the new one, never a mix, and no leaked block.
 * Readers take no lock: they read `version` before and after; a writer bumps it after
 * each change, before the blocks it freed can be reused, and readers retry on change.
 * Must not: store to the heap except through pmem.c / redo commits.
 */
#include <linux/futex.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "alloc.h"
#include "pm_index_api.h"
#include "pmi_md5.h"

#define TOMB 1u
#define RETRIES_BEFORE_LOCK 8

struct slot {                   /* hash and record side by side: one cache miss per probe */
    _Atomic uint32_t hash;      /* 0 empty, 1 tombstone, else hash | 0x80000000 */
    uint32_t pad;
    _Atomic uint64_t rec;       /* record offset */
};

struct tab {
    uint64_t cap;               /* slots, a power of two */
    struct slot *slot;
    struct tab *retired;        /* older tables, freed at close (readers may still hold them) */
};

struct pm_index {
    pm_heap *h;
    uint64_t super_off;
    uint64_t head_off;
    int verify_reads;           /* pm_index_read's PM_VERIFY_ALL (on) or PM_VERIFY_SMALL (off) */
    pthread_mutex_t wlock;      /* one writer at a time */
    /* group commit (pm_index_submit): queued writers' ops, and whether one leads */
    pthread_mutex_t gq_lock;
    struct gq_waiter **gq;      /* queued writers, oldest first */
    uint32_t gq_n, gq_cap;
    int gq_leader;
    uint32_t gq_limit;          /* 0: group commit off; else the most ops one group commits */
    _Atomic uint32_t writers;   /* writers inside a put or delete now (pm_index_writer_enter) */
    uint64_t used;              /* writer: slots holding a record or a tombstone */
    uint64_t rng;               /* writer: xorshift state for tower heights */
    _Alignas(64) atomic_uint_fast64_t version;  /* bumped after every change */
    _Atomic uint64_t count;     /* objects */
    _Alignas(64) struct tab *_Atomic tab;
};

/* ------------------------------------------------------------------ records */

/* A record decoded (FORMAT.md 4.7): readers decode a copy once and check it against the
 * heap's bounds (decode); writers, who hold the lock, decode in place. */
struct rec {
    uint32_t crc32c, height, inl, ctype_size, key_size;
    uint64_t mtime_ns, value_size;
    uint64_t value_off;         /* where the value is: inside the record when inline */
    uint64_t value_block;       /* the value's own block; 0 when inline */
    uint32_t value_crc32c;      /* as stored; 0 (to be computed) for a small inline value */
    uint32_t small;             /* an inline value of at most PMD_OBJ_SMALL_MAX bytes: CRC not stored */
    uint32_t derived;           /* PMD_OBJ_FLAG_MD5_DERIVED: the ETag is the MD5 of the value, not stored */
    uint8_t etag[16];           /* as stored; unset when derived (rec_etag) */
    uint64_t tail_off, key_off; /* heap offsets of the tail and the key (the content type follows) */
};

static uint64_t next_word(uint64_t r, uint32_t lvl) { return r + PMD_OBJ_HDR_SIZE + 8ull * lvl; }
/* tail_size -- bytes from the tail to the key (FORMAT.md 4.7). derived: the record has
 * PMD_OBJ_FLAG_MD5_DERIVED (no stored ETag). */
static uint32_t tail_size(int inl, int derived, uint64_t vlen) {
    if (!inl) return PMD_OBJ_TAIL_EXT;
    return derived ? 2 : PMD_OBJ_TAIL_INLINE + (vlen > PMD_OBJ_SMALL_MAX ? 4 : 0);
}
/* new_derived -- whether a record written now leaves its ETag to be derived: a small
 * inline value's (16 of ~150 bytes for 100-byte values; MD5 of them costs ~200 ns). */
static int new_derived(uint64_t vlen) { return vlen <= PMD_OBJ_SMALL_MAX; }
/* rec_meta_size -- a record written now: header, links, tail, key, content type. */
static uint64_t rec_meta_size(uint32_t height, int inl, uint64_t vlen, uint32_t klen, uint32_t ctlen) {
    return PMD_OBJ_HDR_SIZE + 8ull * height + tail_size(inl, new_derived(vlen), vlen) + klen + ctlen;
}
/* rec_block_size -- the block a record of `bytes` takes: its size, but a record of height
 * 4 or more (1 in 512) rounded up to 64 bytes up to 256, so the rare tall records share a
 * few size classes instead of holding a mostly empty run each (classes step by 8 there;
 * 0.02 of the space ratio at 100,000 objects of 100 bytes). The checker only asks that the
 * record fit its block (I2). */
static uint64_t rec_block_size(uint32_t height, uint64_t bytes) {
    return height >= 4 && bytes <= 256 ? (bytes + 63) & ~(uint64_t)63 : bytes;
}
static uint32_t rec_height(pm_heap *h, uint64_t r) { return h->base[r + 4] & PMD_OBJ_HEIGHT_MASK; }

/* rec_key -- writers' fast path (find_preds): the key of a published record. */
static const uint8_t *rec_key(pm_heap *h, uint64_t r, uint32_t *klen) {
    const uint8_t *p = h->base + r, *t = p + PMD_OBJ_HDR_SIZE + 8u * (p[4] & PMD_OBJ_HEIGHT_MASK);
    uint16_t ks, vs;
    memcpy(&ks, p + 6, 2);
    memcpy(&vs, t, 2);          /* an inline tail's value_size (an external one's low bytes: unused) */
    *klen = ks;
    return t + tail_size(p[4] & PMD_OBJ_FLAG_INLINE, p[4] & PMD_OBJ_FLAG_MD5_DERIVED, vs);
}

/* decode -- record r into *o if it fits the heap: a stale offset held by a reader, or a
 * record rewritten under it, can make it retry but never read out of bounds. */
static int decode(pm_heap *h, uint64_t r, struct rec *o) {
    uint64_t size = pm_heap_size(h);
    if (r < PMD_ROOT_OFF || r % 8 || r + PMD_OBJ_HDR_SIZE > size) return 0;
    struct pmd_object hd;
    memcpy(&hd, h->base + r, sizeof hd);
    o->crc32c = hd.crc32c; o->mtime_ns = hd.mtime_ns;
    o->height = hd.height_flags & PMD_OBJ_HEIGHT_MASK;
    o->inl = (hd.height_flags & PMD_OBJ_FLAG_INLINE) != 0;
    o->derived = (hd.height_flags & PMD_OBJ_FLAG_MD5_DERIVED) != 0;
    o->ctype_size = hd.ctype_size; o->key_size = hd.key_size;
    if (o->height < 1 || o->height > PMD_OBJ_MAX_HEIGHT || (hd.height_flags & PMD_OBJ_FLAGS_RESERVED) ||
        o->key_size > PMD_OBJ_KEY_MAX || (o->derived && !o->inl))
        return 0;
    o->tail_off = r + PMD_OBJ_HDR_SIZE + 8ull * o->height;
    if (o->tail_off + (!o->inl ? PMD_OBJ_TAIL_EXT : o->derived ? 2 : PMD_OBJ_TAIL_INLINE + 4) > size) return 0;
    const uint8_t *t = h->base + o->tail_off;
    if (o->inl) {       /* +4 above: every record with a stored ETag takes a block reaching t + 22 */
        uint16_t vs;
        memcpy(&vs, t, 2);
        if (o->derived && vs > PMD_OBJ_SMALL_MAX) return 0;
        if (!o->derived) memcpy(o->etag, t + offsetof(struct pmd_tail_inline, etag), 16);
        o->small = vs <= PMD_OBJ_SMALL_MAX;
        o->value_crc32c = 0;
        if (!o->small) memcpy(&o->value_crc32c, t + PMD_OBJ_TAIL_INLINE, 4);    /* never derived */
        o->value_size = vs; o->value_block = 0;
        if (vs > PMD_OBJ_INLINE_MAX) return 0;
    } else {
        struct pmd_tail_ext te;
        memcpy(&te, t, PMD_OBJ_TAIL_EXT);
        memcpy(o->etag, te.etag, 16);
        o->small = 0;
        o->value_size = te.value_size; o->value_block = te.value_off;
        o->value_crc32c = te.value_crc32c;
    }
    o->key_off = o->tail_off + tail_size(o->inl, o->derived, o->value_size);
    uint64_t meta = o->key_off - r + o->key_size + o->ctype_size;
    if (meta > size - r) return 0;
    o->value_off = o->inl ? r + meta : o->value_block;
    return o->value_off <= size && o->value_size <= size - o->value_off;
}

/* rec_crc -- FORMAT.md 4.7: the value's CRC32C, bytes [4, 16), the tail through the
 * content type (I2; through vcrc, I4 of a small value). */
static uint32_t rec_crc(pm_heap *h, uint64_t r, const struct rec *o, uint32_t vcrc) {
    uint32_t c = pm_crc32c(0, &vcrc, 4);
    c = pm_crc32c(c, h->base + r + 4, PMD_OBJ_HDR_SIZE - 4);
    return pm_crc32c(c, h->base + o->tail_off, o->key_off - o->tail_off + o->key_size + o->ctype_size);
}

/* value_check -- the value's CRC32C (computed for a small inline value) into *vcrc; 0 if
 * the record or the value fails its CRC (I2, I4). verify: PM_VERIFY_* (a small value's
 * record is checked unless NONE: its value's CRC is computed anyway). */
static int value_check(pm_heap *h, uint64_t r, const struct rec *o, int verify, uint32_t *vcrc) {
    if (o->small) {
        *vcrc = pm_crc32c(0, h->base + o->value_off, o->value_size);
        return verify == PM_VERIFY_NONE || rec_crc(h, r, o, *vcrc) == o->crc32c;
    }
    *vcrc = o->value_crc32c;
    return verify != PM_VERIFY_ALL || (rec_crc(h, r, o, *vcrc) == o->crc32c &&
                                       pm_crc32c(0, h->base + o->value_off, o->value_size) == *vcrc);
}

static int key_cmp(pm_heap *h, uint64_t r, const uint8_t *key, uint32_t klen) {
    uint32_t rlen;
    const uint8_t *rk = rec_key(h, r, &rlen);
    int c = memcmp(rk, key, rlen < klen ? rlen : klen);
    return c ? c : (rlen > klen) - (rlen < klen);
}

static int bytes_cmp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    return c ? c : (alen > blen) - (alen < blen);
}

/* rec_etag -- the record's ETag: stored, or the MD5 of its small value (derived). */
static void rec_etag(pm_heap *h, const struct rec *o, uint8_t out[16]) {
    if (o->derived) pmi_md5(h->base + o->value_off, o->value_size, out);
    else memcpy(out, o->etag, 16);
}

/* fill_info -- info from a decoded record; vcrc: the value's CRC32C (value_check).
 * want_etag 0: a derived ETag is left all zero (a caller that reads the value only). */
static void fill_info(pm_heap *h, uint64_t r, const struct rec *o, uint32_t vcrc, struct pm_obj_info *info,
                      int want_etag) {
    info->rec_off = r;
    info->value_off = o->value_off;
    info->value_size = o->value_size;
    info->mtime_ns = o->mtime_ns;
    info->value_crc32c = vcrc;
    info->ctype_size = o->ctype_size;
    if (want_etag || !o->derived) rec_etag(h, o, info->etag);
    else memset(info->etag, 0, 16);
    memcpy(info->ctype, h->base + o->key_off + o->key_size, o->ctype_size);
}

/* fill_info_at -- writers: info of the published record r. */
static void fill_info_at(pm_heap *h, uint64_t r, struct pm_obj_info *info) {
    struct rec o;
    uint32_t vcrc;
    decode(h, r, &o);
    value_check(h, r, &o, PM_VERIFY_NONE, &vcrc);
    fill_info(h, r, &o, vcrc, info, 1);
}

/* ------------------------------------------------------------------ DRAM hash */

static uint32_t key_hash(const uint8_t *key, uint32_t klen) { return pm_crc32c(0, key, klen) | 0x80000000u; }

static struct tab *tab_new(uint64_t cap) {
    struct tab *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cap = cap;
    t->slot = calloc(cap, sizeof *t->slot);
    if (!t->slot) { free(t); return NULL; }
    return t;
}

static void tab_free_all(struct tab *t) {
    while (t) { struct tab *r = t->retired; free(t->slot); free(t); t = r; }
}

/* tab_find -- the slot holding key, or -1; *rec gets the record it checked. Safe for
 * readers: the record is read through a bounds-checked snapshot. */
static int64_t tab_find(pm_heap *h, struct tab *t, const uint8_t *key, uint32_t klen, uint32_t hv, uint64_t *rec) {
    uint64_t mask = t->cap - 1, i = hv & mask;
    for (uint64_t probe = 0; probe < t->cap; probe++, i = (i + 1) & mask) {
        uint32_t s = atomic_load_explicit(&t->slot[i].hash, memory_order_acquire);
        if (s == 0) return -1;
        if (s != hv) continue;
        uint64_t r = atomic_load_explicit(&t->slot[i].rec, memory_order_acquire);
        struct rec o;
        if (r && decode(h, r, &o) && bytes_cmp(h->base + o.key_off, o.key_size, key, klen) == 0) {
            *rec = r;
            return (int64_t)i;
        }
    }
    return -1;
}

/* tab_put -- writer: point key at r (insert or replace). */
static int tab_put(pm_index *x, const uint8_t *key, uint32_t klen, uint64_t r) {
    struct tab *t = atomic_load(&x->tab);
    uint32_t hv = key_hash(key, klen);
    uint64_t found;
    int64_t i = tab_find(x->h, t, key, klen, hv, &found);
    if (i >= 0) { atomic_store_explicit(&t->slot[i].rec, r, memory_order_release); return PM_OK; }
    if ((x->used + 1) * 10 > t->cap * 7) {     /* grow (and drop tombstones) at 70% */
        struct tab *n = tab_new(t->cap * 2);
        if (!n) return PM_E_NOMEM;
        uint64_t used = 0;
        for (uint64_t k = 0; k < t->cap; k++) {
            uint32_t s = t->slot[k].hash;
            if (s <= TOMB) continue;
            uint64_t j = s & (n->cap - 1);
            while (n->slot[j].hash) j = (j + 1) & (n->cap - 1);
            n->slot[j].hash = s; n->slot[j].rec = t->slot[k].rec; used++;
        }
        n->retired = t;
        atomic_store_explicit(&x->tab, n, memory_order_release);
        x->used = used;
        t = n;
    }
    uint64_t mask = t->cap - 1, j = hv & mask;
    while (atomic_load(&t->slot[j].hash) > TOMB) j = (j + 1) & mask;
    if (atomic_load(&t->slot[j].hash) == 0) x->used++;
    atomic_store_explicit(&t->slot[j].rec, r, memory_order_release);
    atomic_store_explicit(&t->slot[j].hash, hv, memory_order_release);
    return PM_OK;
}

static void tab_del(pm_index *x, const uint8_t *key, uint32_t klen) {
    struct tab *t = atomic_load(&x->tab);
    uint64_t found;
    int64_t i = tab_find(x->h, t, key, klen, key_hash(key, klen), &found);
    if (i < 0) return;
    atomic_store_explicit(&t->slot[i].rec, 0, memory_order_release);
    atomic_store_explicit(&t->slot[i].hash, TOMB, memory_order_release);
}

/* ------------------------------------------------------------------ skip list (writer) */

/* find_preds -- writer: the last record before key on every level; returns the record
 * with exactly this key, or 0. */
static uint64_t find_preds(pm_index *x, const uint8_t *key, uint32_t klen, uint64_t preds[PMD_OBJ_MAX_HEIGHT]) {
    pm_heap *h = x->h;
    uint64_t r = x->head_off;
    for (int lvl = PMD_OBJ_MAX_HEIGHT - 1; lvl >= 0; lvl--) {
        for (;;) {
            uint64_t n = pm_load8(h, next_word(r, (uint32_t)lvl));
            if (!n || key_cmp(h, n, key, klen) >= 0) break;
            r = n;
        }
        preds[lvl] = r;
    }
    uint64_t n = pm_load8(h, next_word(preds[0], 0));
    return n && key_cmp(h, n, key, klen) == 0 ? n : 0;
}

static uint32_t random_height(pm_index *x) {
    uint32_t hgt = 1;
    for (;;) {
        x->rng ^= x->rng << 13; x->rng ^= x->rng >> 7; x->rng ^= x->rng << 17;
        /* p = 1/8: 9.1 bytes of links per record on average (1/4: 10.7), and the rare tall
         * records spread over fewer size classes, each with a partly empty run (FORMAT.md
         * 4.7); a search compares ~33% more keys, and lookups go through the DRAM hash */
        if ((x->rng & 7) || hgt == PMD_OBJ_MAX_HEIGHT) return hgt;
        hgt++;
    }
}

static int cond_ok(pm_heap *h, uint64_t old, int cond, const uint8_t *match_etag) {
    if (cond == PM_COND_ABSENT) return old == 0;
    if (cond != PM_COND_ETAG) return 1;
    struct rec o;
    uint8_t etag[16];
    if (!old || !decode(h, old, &o)) return 0;
    rec_etag(h, &o, etag);
    return memcmp(etag, match_etag, 16) == 0;
}

/* free_entries -- writer: entries freeing record r and its value block. */
static int free_entries(pm_heap *h, uint64_t r, struct reservation *res, uint32_t *nres,
                        struct pmd_redo_entry *e, uint32_t *n) {
    struct rec o;
    if (!decode(h, r, &o)) return PM_E_CORRUPT;
    int rc = pmi_locate(h, r, &res[(*nres)++], e, n);
    if (!rc && o.value_block) rc = pmi_locate(h, o.value_block, &res[(*nres)++], e, n);
    return rc;
}

/* record_write -- writer: an object record at r (and its value at voff) with plain
 * stores; made durable, and published, by the caller's commit (FORMAT.md 4.7, 7.9). */
static void record_write(pm_heap *h, uint64_t r, uint64_t voff, uint32_t height, const uint64_t *nexts,
                         const uint8_t *key, uint32_t klen, const uint8_t *ctype, uint32_t ctlen,
                         const uint8_t *value, uint64_t vlen, uint32_t vcrc, const uint8_t *etag, uint64_t mtime_ns) {
    int inl = vlen <= PMD_OBJ_INLINE_MAX, derived = new_derived(vlen);
    struct pmd_object o = {0, (uint8_t)(height | (inl ? PMD_OBJ_FLAG_INLINE : 0) | (derived ? PMD_OBJ_FLAG_MD5_DERIVED : 0)),
                           (uint8_t)ctlen, (uint16_t)klen, mtime_ns};
    uint8_t tail[PMD_OBJ_TAIL_EXT];
    uint32_t tsz = tail_size(inl, derived, vlen);
    if (inl) {
        uint16_t vs = (uint16_t)vlen;
        memcpy(tail, &vs, 2);
        if (!derived) memcpy(tail + offsetof(struct pmd_tail_inline, etag), etag, 16);
        if (vlen > PMD_OBJ_SMALL_MAX) memcpy(tail + PMD_OBJ_TAIL_INLINE, &vcrc, 4);
    } else {
        struct pmd_tail_ext te = {vlen, voff, vcrc, {0}};
        memcpy(te.etag, etag, 16);
        memcpy(tail, &te, PMD_OBJ_TAIL_EXT);
    }
    uint32_t c = pm_crc32c(0, &vcrc, 4);                      /* FORMAT.md 4.7 */
    c = pm_crc32c(c, (const uint8_t *)&o + 4, PMD_OBJ_HDR_SIZE - 4);
    c = pm_crc32c(pm_crc32c(pm_crc32c(c, tail, tsz), key, klen), ctype, ctlen);
    o.crc32c = c;
    uint64_t t = r + PMD_OBJ_HDR_SIZE + 8ull * height;
    pmi_write(h, r, &o, PMD_OBJ_HDR_SIZE);
    pmi_write(h, r + PMD_OBJ_HDR_SIZE, nexts, 8ull * height);
    pmi_write(h, t, tail, tsz);
    if (klen) pmi_write(h, t + tsz, key, klen);
    if (ctlen) pmi_write(h, t + tsz + klen, ctype, ctlen);
    if (vlen) pmi_write(h, voff, value, vlen);
}

/* record_ranges -- the bytes a commit publishing record r (and its value) checks and
 * persists as data: the header, the tail through the value, an external value. Not the
 * next pointers: later commits change them, so they are published by SET entries of
 * their own, which chain those commits to this one (FORMAT.md 7.9, L8). Returns the count. */
static uint32_t record_ranges(uint64_t r, uint32_t height, uint64_t meta, int inl, uint64_t voff, uint64_t vlen,
                              struct pmi_range *out) {
    uint64_t t = r + PMD_OBJ_HDR_SIZE + 8ull * height;
#ifdef PMSTORE_MUTANT_DATALINKS
    t = r + PMD_OBJ_HDR_SIZE;   /* the links ride as data, checked by CHECK (the bug L8 closes) */
#endif
    out[0] = (struct pmi_range){r, PMD_OBJ_HDR_SIZE};
    out[1] = (struct pmi_range){t, r + meta - t + (inl ? vlen : 0)};
    if (inl) return 2;
    out[2] = (struct pmi_range){voff, vlen};
    return 3;
}

/* ------------------------------------------------------------------ API */

/* pm_index_create -- a new store in the heap: superblock and head record, published in
 * the root word by one commit. */
int pm_index_create(pm_heap *h, uint64_t *super_off) {
    if (!h->alloc) return PM_E_ARG;
    struct pmd_redo_entry e[8 + PMD_OBJ_MAX_HEIGHT];
    uint32_t n = 0;
    struct reservation rs, rh;
    uint64_t head_size = rec_meta_size(PMD_OBJ_MAX_HEIGHT, 1, 0, 0, 0);
    int rc = pmi_reserve(h, sizeof(struct pmd_store_super), &rs, e, &n);
    if (rc) return rc;
    rc = pmi_reserve(h, head_size, &rh, e, &n);
    if (rc) { pmi_unreserve(h, &rs); return rc; }
    struct pmd_store_super sb = {PMD_STORE_MAGIC, PMD_STORE_VERSION, 0, rh.off, 0, {0}};
    static const uint64_t no_next[PMD_OBJ_MAX_HEIGHT];
    static const uint8_t no_etag[16];
    pmi_write(h, rs.off, &sb, sizeof sb);
    record_write(h, rh.off, rh.off + head_size, PMD_OBJ_MAX_HEIGHT, no_next, NULL, 0, NULL, 0, NULL, 0, 0, no_etag, 0);
    e[n++] = (struct pmd_redo_entry){PMD_ROOT_OFF | PMD_REDO_OP_SET, rs.off};
    for (uint32_t l = 0; l < PMD_OBJ_MAX_HEIGHT; l++)    /* the head's links: words later commits change */
        e[n++] = (struct pmd_redo_entry){next_word(rh.off, l) | PMD_REDO_OP_SET, 0};
    struct pmi_range data[3] = {{rs.off, sizeof sb}};
    uint32_t nd = 1 + record_ranges(rh.off, PMD_OBJ_MAX_HEIGHT, head_size, 1, rh.off + head_size, 0, data + 1);
    rc = pmi_redo_commit(h, e, n, data, nd);  /* durable: superblock, head and root together */
    if (rc) { pmi_unreserve(h, &rs); pmi_unreserve(h, &rh); return rc; }
    pmi_reserved_committed(h, &rs);
    pmi_reserved_committed(h, &rh);
    *super_off = rs.off;
    return PM_OK;
}

/* upgrade -- raise a version-2 store to 3 (FORMAT.md 9), before any record written
 * now (PMD_OBJ_FLAG_MD5_DERIVED, which version 2 lacks) can reach the file: one word,
 * so one commit. The records stay as they are: version 3 reads both layouts. */
static int upgrade(pm_heap *h, uint64_t super_off) {
    uint32_t reserved0;
    memcpy(&reserved0, h->base + super_off + offsetof(struct pmd_store_super, reserved0), 4);
    struct pmd_redo_entry e = {(super_off + offsetof(struct pmd_store_super, version)) | PMD_REDO_OP_SET,
                               (uint64_t)reserved0 << 32 | PMD_STORE_VERSION};
    return pmi_redo_commit(h, &e, 1, NULL, 0);  /* durable: version 3 */
}

/* pm_index_open -- check the superblock, walk level 0 (I1-I3) and build the DRAM hash. */
int pm_index_open(pm_heap *h, uint64_t super_off, pm_index **out, struct pm_index_report *rep) {
    memset(rep, 0, sizeof *rep);
    if (!pmi_in_range(h, super_off, sizeof(struct pmd_store_super)) || super_off % 8) return PM_E_CORRUPT;
    const struct pmd_store_super *sb = (const void *)(h->base + super_off);
    if (sb->magic != PMD_STORE_MAGIC || (sb->version != PMD_STORE_VERSION && sb->version != PMD_STORE_VERSION_OLD))
        return PM_E_CORRUPT;                                                    /* I5 */
    int old_version = sb->version == PMD_STORE_VERSION_OLD;
    uint64_t head = sb->head_off;
    struct rec o;
    if (!decode(h, head, &o) || o.height != PMD_OBJ_MAX_HEIGHT || !o.inl || o.key_size || o.ctype_size ||
        o.value_size || rec_crc(h, head, &o, 0) != o.crc32c)
        return PM_E_CORRUPT;                                                    /* I5 */
    pm_index *x = aligned_alloc(64, (sizeof *x + 63) & ~(size_t)63);
    if (!x) return PM_E_NOMEM;
    memset(x, 0, sizeof *x);
    x->h = h; x->super_off = super_off; x->head_off = head; x->verify_reads = 1;
    /* tower heights: seeded per open from the clock and a process-wide count, not only
     * the handle's address (malloc hands a reopened index the same one: every first insert
     * after a reopen drew the same height) */
    static _Atomic uint64_t opens;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    x->rng = 0x9E3779B97F4A7C15ull * (atomic_fetch_add(&opens, 1) + 1) ^ (uint64_t)(uintptr_t)x ^
             ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
    if (!x->rng) x->rng = 1;    /* xorshift's one fixed point */
    pthread_mutex_init(&x->wlock, NULL);
    pthread_mutex_init(&x->gq_lock, NULL);
    x->gq = NULL; x->gq_n = x->gq_cap = 0; x->gq_leader = 0; x->gq_limit = 0;
    atomic_store(&x->writers, 0);
    struct tab *t = tab_new(1024);
    if (!t) { free(x); return PM_E_NOMEM; }
    atomic_store(&x->tab, t);
    int rc = PM_OK;
    /* No CRC here: a record that fails its CRC (I2/I4: a flipped byte in its key, fields or
     * small value) stays reachable, and reading it raises CorruptObjectError, so one bad
     * object does not keep the others from being served (the checker reports it). */
    uint64_t prev = 0, steps = 0, limit = pm_heap_size(h) / 24;   /* the smallest record: 16 + 8 bytes */
    for (uint64_t r = pm_load8(h, next_word(head, 0)); r; r = pm_load8(h, next_word(r, 0))) {
        if (++steps > limit || !decode(h, r, &o) || o.key_size < 1 || o.inl != (o.value_size <= PMD_OBJ_INLINE_MAX) ||
            (o.derived && old_version)) {
            rc = PM_E_CORRUPT; rep->objects = r; break;                        /* I2; I5 */
        }
        const uint8_t *k = h->base + o.key_off;
        if (prev && key_cmp(h, prev, k, o.key_size) >= 0) {
            rc = PM_E_CORRUPT; rep->objects = r; break;                        /* I1: strictly increasing */
        }
        if ((rc = tab_put(x, k, o.key_size, r))) break;
        rep->objects++; rep->value_bytes += o.value_size; rep->key_bytes += o.key_size;
        prev = r;
    }
    if (!rc && old_version && (rc = upgrade(h, super_off)) == PM_OK) rep->upgraded_from = PMD_STORE_VERSION_OLD;
    if (rc) { pm_index_close(x); return rc; }
    atomic_store(&x->count, rep->objects);
    *out = x;
    return PM_OK;
}

void pm_index_close(pm_index *x) {
    if (!x) return;
    tab_free_all(atomic_load(&x->tab));
    pthread_mutex_destroy(&x->wlock);
    pthread_mutex_destroy(&x->gq_lock);
    free(x->gq);
    free(x);
}

uint64_t pm_index_count(pm_index *x) { return atomic_load(&x->count); }

/* pm_index_get -- copy value[start:start+limit] of key into dst (no lock; retried if a
 * write lands meanwhile). verify: PM_VERIFY_* (pm_index_api.h), over the whole value.
 * Returns bytes copied, PM_E_NOT_FOUND, PM_E_BUFFER (info filled, but for a small
 * value's CRC32C: cap too small for the wanted part of the value), or PM_E_CORRUPT_OBJECT. */
static int get_impl(pm_index *x, const uint8_t *key, uint32_t klen, uint64_t start, uint64_t limit, uint8_t *dst,
                    uint64_t cap, int verify, int want_etag, struct pm_obj_info *info);

int pm_index_get(pm_index *x, const uint8_t *key, uint32_t klen, uint64_t start, uint64_t limit, uint8_t *dst,
                 uint64_t cap, int verify, struct pm_obj_info *info) {
    return get_impl(x, key, klen, start, limit, dst, cap, verify, 1, info);
}

/* get_impl -- pm_index_get; want_etag 0: leave a derived ETag uncomputed (pm_read_req). */
static int get_impl(pm_index *x, const uint8_t *key, uint32_t klen, uint64_t start, uint64_t limit, uint8_t *dst,
                    uint64_t cap, int verify, int want_etag, struct pm_obj_info *info) {
    pm_heap *h = x->h;
    uint32_t hv = key_hash(key, klen);
    for (int attempt = 0;; attempt++) {
        int locked = attempt >= RETRIES_BEFORE_LOCK;   /* a reader starved by writers takes the lock */
        if (locked) pthread_mutex_lock(&x->wlock);
        uint64_t v1 = atomic_load_explicit(&x->version, memory_order_acquire);
        struct tab *t = atomic_load_explicit(&x->tab, memory_order_acquire);
        uint64_t r = 0;
        struct rec o;
        uint32_t vcrc = 0;
        int rc;
        if (tab_find(h, t, key, klen, hv, &r) < 0) rc = PM_E_NOT_FOUND;
        else if (!decode(h, r, &o)) rc = PM_E_NOT_FOUND;   /* rewritten under us: the version check retries */
        else {
            uint64_t want = start >= o.value_size ? 0 : o.value_size - start;
            if (want > limit) want = limit;
            if (want > cap) {       /* info for the caller's next, larger buffer: no CRC yet */
                fill_info(h, r, &o, o.value_crc32c, info, want_etag);
                rc = PM_E_BUFFER;
            } else {
                int ok = value_check(h, r, &o, verify, &vcrc);  /* I2, I4 */
                fill_info(h, r, &o, vcrc, info, want_etag);
                memcpy(dst, h->base + o.value_off + (start < o.value_size ? start : o.value_size), want);
                rc = ok ? (int)(want > INT32_MAX ? INT32_MAX : want) : PM_E_CORRUPT_OBJECT;
            }
        }
        atomic_thread_fence(memory_order_acquire);
        uint64_t v2 = atomic_load_explicit(&x->version, memory_order_relaxed);
        if (locked) pthread_mutex_unlock(&x->wlock);
        if (v1 == v2 || locked) return rc;
    }
}

void pm_index_set_verify(pm_index *x, int on) { x->verify_reads = on; }
void pm_index_seed_heights(pm_index *x, uint64_t seed) {
    pthread_mutex_lock(&x->wlock);      /* heights are drawn under it */
    x->rng = seed * 0x9E3779B97F4A7C15ull ^ 0xD1B54A32D192ED03ull;
    if (!x->rng) x->rng = 1;            /* xorshift's one fixed point */
    pthread_mutex_unlock(&x->wlock);
}

int pm_index_read(pm_index *x, const char *key, const struct pm_read_req *req) {
    size_t klen = strnlen(key, PMD_OBJ_KEY_MAX + 1);
    if (klen < 1 || klen > PMD_OBJ_KEY_MAX) return PM_E_NOT_FOUND;
    return get_impl(x, (const uint8_t *)key, (uint32_t)klen, req->start, req->limit, req->dst, req->cap,
                    x->verify_reads, !req->value_only, req->info);
}

static int submit_plain(pm_index *x, const uint8_t *key, uint32_t klen, const uint8_t *value, uint64_t vlen,
                        struct pm_obj_info *info);

int pm_index_put_plain(pm_index *x, const char *key, const uint8_t *value, uint64_t vlen, struct pm_obj_info *info) {
    size_t klen = strnlen(key, PMD_OBJ_KEY_MAX + 1);
    if (x->gq_limit && pm_index_writer_enter(x) > 0) {  /* another writer is in: share its commit */
        int rc = submit_plain(x, (const uint8_t *)key, (uint32_t)(klen > PMD_OBJ_KEY_MAX ? 0 : klen), value, vlen, info);
        pm_index_writer_leave(x);
        return rc;
    }
    int created = 0;
    int rc = pm_index_put(x, (const uint8_t *)key, (uint32_t)(klen > PMD_OBJ_KEY_MAX ? 0 : klen), (const uint8_t *)"", 0, value,
                          vlen, NULL, 0, PM_COND_NONE, NULL, info, &created);
    if (x->gq_limit) pm_index_writer_leave(x);
    return rc < 0 ? rc : created;
}

/* submit_plain -- pm_index_put_plain's op through group commit (pm_index_submit); info
 * gets what the op's record holds: size, mtime, CRC32C, ETag. */
static int submit_plain(pm_index *x, const uint8_t *key, uint32_t klen, const uint8_t *value, uint64_t vlen,
                        struct pm_obj_info *info) {
    if (klen < 1) return PM_E_ARG;
    uint8_t etag[16];
    pmi_md5(value, vlen, etag);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct pm_index_op op = {key, klen, 0, (const uint8_t *)"", 0, PM_COND_NONE, value, vlen, etag, NULL,
                             (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, 0, 0};
    int rc = pm_index_submit(x, &op, x->gq_limit);
    if (rc < 0) return rc;
    memset(info, 0, offsetof(struct pm_obj_info, ctype));
    info->value_size = vlen;
    info->mtime_ns = op.mtime_ns;
    info->value_crc32c = pm_crc32c(0, value, vlen);
    memcpy(info->etag, etag, 16);
    return rc;
}

/* pm_index_put -- insert or replace key (FORMAT.md 7.9): one redo commit allocates the
 * record (and the value block), links it on every level, and frees the old object. */
int pm_index_put(pm_index *x, const uint8_t *key, uint32_t klen, const uint8_t *ctype, uint32_t ctlen,
                 const uint8_t *value, uint64_t vlen, const uint8_t *etag, uint64_t mtime_ns,
                 int cond, const uint8_t *match_etag, struct pm_obj_info *info, int *created) {
    pm_heap *h = x->h;
    if (klen < 1 || klen > PMD_OBJ_KEY_MAX || ctlen > PMD_OBJ_CTYPE_MAX) return PM_E_ARG;
    uint32_t vcrc = pm_crc32c(0, value, vlen);          /* before the lock: the big cost */
    uint8_t md5[16];
    if (!etag) { pmi_md5(value, vlen, md5); etag = md5; }   /* the caller may leave the ETag to us */
    if (!mtime_ns) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        mtime_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    }
    pthread_mutex_lock(&x->wlock);
    uint64_t preds[PMD_OBJ_MAX_HEIGHT];
    uint64_t old = find_preds(x, key, klen, preds);
    int rc = PM_OK;
    if (!cond_ok(h, old, cond, match_etag)) { rc = PM_E_PRECONDITION; goto out; }
    uint32_t height = old ? rec_height(h, old) : random_height(x);
    int inl = vlen <= PMD_OBJ_INLINE_MAX;
    uint64_t meta = rec_meta_size(height, inl, vlen, klen, ctlen);
    struct pmd_redo_entry e[4 + 2 * PMD_OBJ_MAX_HEIGHT + 8];
    uint32_t n = 0, nres = 0, nfree = 0;
    struct reservation res[2], fre[2];
    rc = pmi_reserve(h, rec_block_size(height, meta + (inl ? vlen : 0)), &res[nres], e, &n);
    if (rc) goto out;
    nres++;
    if (!inl) {
        rc = pmi_reserve(h, vlen, &res[nres], e, &n);
        if (rc) goto unreserve;
        nres++;
    }
    uint64_t r = res[0].off, voff = inl ? r + meta : res[1].off;
    uint64_t nexts[PMD_OBJ_MAX_HEIGHT];
    for (uint32_t l = 0; l < height; l++) nexts[l] = pm_load8(h, next_word(old ? old : preds[l], l));
    record_write(h, r, voff, height, nexts, key, klen, ctype, ctlen, value, vlen, vcrc, etag, mtime_ns);
    for (uint32_t l = 0; l < height; l++) {
#ifndef PMSTORE_MUTANT_DATALINKS
        e[n++] = (struct pmd_redo_entry){next_word(r, l) | PMD_REDO_OP_SET, nexts[l]};
#endif
        e[n++] = (struct pmd_redo_entry){next_word(preds[l], l) | PMD_REDO_OP_SET, r};
    }
    if (old && (rc = free_entries(h, old, fre, &nfree, e, &n))) goto unreserve;
    struct pmi_range data[3];
    uint32_t nd = record_ranges(r, height, meta, inl, voff, vlen, data);
    rc = pmi_redo_commit(h, e, n, data, nd);   /* durable: the object and its links, or nothing */
    if (rc) goto unreserve;
    for (uint32_t k = 0; k < nres; k++) pmi_reserved_committed(h, &res[k]);
    tab_put(x, key, klen, r);       /* out of DRAM: lookups fall back... never: tab_put only fails to grow */
    if (!old) atomic_fetch_add(&x->count, 1);
    atomic_fetch_add_explicit(&x->version, 1, memory_order_release);  /* before the old blocks can be reused */
    for (uint32_t k = 0; k < nfree; k++) pmi_released(h, &fre[k]);
    struct rec o;
    decode(h, r, &o);
    fill_info(h, r, &o, vcrc, info, 0);
    memcpy(info->etag, etag, 16);   /* the MD5 we were given or computed above */
    *created = !old;
    pthread_mutex_unlock(&x->wlock);
    return PM_OK;
unreserve:
    for (uint32_t k = 0; k < nres; k++) pmi_unreserve(h, &res[k]);
out:
    if (rc == PM_E_PRECONDITION && old) fill_info_at(h, old, info);
    pthread_mutex_unlock(&x->wlock);
    return rc;
}

/* pm_index_delete -- unlink key on every level and free it, in one redo commit. */
int pm_index_delete(pm_index *x, const uint8_t *key, uint32_t klen, int cond, const uint8_t *match_etag) {
    pm_heap *h = x->h;
    pthread_mutex_lock(&x->wlock);
    uint64_t preds[PMD_OBJ_MAX_HEIGHT];
    uint64_t old = find_preds(x, key, klen, preds);
    int rc = PM_OK;
    if (!old) { rc = cond == PM_COND_ETAG ? PM_E_PRECONDITION : PM_E_NOT_FOUND; goto out; }
    if (!cond_ok(h, old, cond, match_etag)) { rc = PM_E_PRECONDITION; goto out; }
    struct pmd_redo_entry e[4 + PMD_OBJ_MAX_HEIGHT];
    uint32_t n = 0, nfree = 0;
    struct reservation fre[2];
    for (uint32_t l = 0; l < rec_height(h, old); l++)
        e[n++] = (struct pmd_redo_entry){next_word(preds[l], l) | PMD_REDO_OP_SET, pm_load8(h, next_word(old, l))};
    if ((rc = free_entries(h, old, fre, &nfree, e, &n))) goto out;
    rc = pmi_redo_commit(h, e, n, NULL, 0);   /* durable: unlinked and freed together */
    if (rc) goto out;
    tab_del(x, key, klen);
    atomic_fetch_sub(&x->count, 1);
    atomic_fetch_add_explicit(&x->version, 1, memory_order_release);
    for (uint32_t k = 0; k < nfree; k++) pmi_released(h, &fre[k]);
out:
    pthread_mutex_unlock(&x->wlock);
    return rc;
}

/* list_walk -- one attempt at a listing; returns entries written, or -1 if a record
 * looked impossible (a concurrent write; the caller retries). */
static int64_t list_walk(pm_index *x, const uint8_t *after, uint32_t alen, const uint8_t *prefix, uint32_t plen,
                         uint32_t limit, uint8_t *buf, uint64_t cap) {
    pm_heap *h = x->h;
    /* start at the later of `after` (exclusive) and `prefix` (inclusive), bytewise */
    const uint8_t *from = alen ? after : prefix;
    uint32_t flen = alen ? alen : plen;
    if (alen && plen && bytes_cmp(prefix, plen, after, alen) > 0) from = prefix, flen = plen;
    uint64_t r = x->head_off, steps = 0, max_steps = 4 * (atomic_load(&x->count) + 64) + 4ull * limit;
    struct rec o;
    const uint8_t *k;
    for (int lvl = PMD_OBJ_MAX_HEIGHT - 1; lvl >= 0; lvl--)   /* last record < from */
        for (;;) {
            uint64_t nx = pm_load8(h, next_word(r, (uint32_t)lvl));
            if (!nx) break;
            if (!decode(h, nx, &o) || (uint32_t)lvl >= o.height || ++steps > max_steps) return -1;
            k = h->base + o.key_off;
            if (bytes_cmp(k, o.key_size, from, flen) >= 0) break;
            r = nx;
        }
    uint64_t used = 0;
    int64_t count = 0;
    for (r = pm_load8(h, next_word(r, 0)); r && count < limit; r = pm_load8(h, next_word(r, 0))) {
        if (!decode(h, r, &o) || ++steps > max_steps) return -1;
        k = h->base + o.key_off;
        if (alen && from == after && bytes_cmp(k, o.key_size, after, alen) == 0) continue;   /* exclusive */
        if (plen && (o.key_size < plen || memcmp(k, prefix, plen))) break;
        uint64_t need = 2 + o.key_size + 2 + o.ctype_size + 8 + 8 + 16 + 4;
        if (used + need > cap) return -2;       /* the caller's buffer holds LIST_ENTRY_MAX per entry */
        uint8_t *p = buf + used;
        uint16_t ks = o.key_size, cs = o.ctype_size;
        uint32_t vcrc;
        value_check(h, r, &o, PM_VERIFY_NONE, &vcrc);  /* a small value's: its bytes are in the record */
        memcpy(p, &ks, 2); memcpy(p + 2, k, ks); p += 2 + ks;
        memcpy(p, &cs, 2); memcpy(p + 2, k + ks, cs); p += 2 + cs;
        memcpy(p, &o.value_size, 8); memcpy(p + 8, &o.mtime_ns, 8); rec_etag(h, &o, p + 16);
        memcpy(p + 32, &vcrc, 4);
        used += need;
        count++;
    }
    return count;
}

/* pm_index_list -- up to limit objects with keys > after (exclusive) that start with
 * prefix, in bytewise key order, packed into buf: per object u16 key size, key, u16
 * content-type size, content type, u64 value size, u64 mtime_ns, 16-byte etag, u32
 * value CRC32C. */
int pm_index_list(pm_index *x, const uint8_t *after, uint32_t alen, const uint8_t *prefix, uint32_t plen,
                  uint32_t limit, uint8_t *buf, uint64_t cap, uint32_t *count) {
    for (int attempt = 0;; attempt++) {
        int locked = attempt >= RETRIES_BEFORE_LOCK;
        if (locked) pthread_mutex_lock(&x->wlock);
        uint64_t v1 = atomic_load_explicit(&x->version, memory_order_acquire);
        int64_t n = list_walk(x, after, alen, prefix, plen, limit, buf, cap);
        atomic_thread_fence(memory_order_acquire);
        uint64_t v2 = atomic_load_explicit(&x->version, memory_order_relaxed);
        if (locked) pthread_mutex_unlock(&x->wlock);
        if (n == -2) return PM_E_BUFFER;
        if (n >= 0 && (v1 == v2 || locked)) { *count = (uint32_t)n; return PM_OK; }
        if (locked) return PM_E_CORRUPT;     /* impossible records with writers excluded */
    }
}

/* ------------------------------------------------------------------ many ops, one commit */

/* An overlay of the words this commit will SET in records that already exist: the
 * searches of later ops in the same commit read through it. */
struct overlay { uint64_t cap, n; uint64_t *off, *val; };

static uint64_t ov_load(pm_heap *h, const struct overlay *ov, uint64_t off) {
    for (uint64_t i = off / 8 & (ov->cap - 1);; i = (i + 1) & (ov->cap - 1)) {
        if (!ov->off[i]) return pm_load8(h, off);
        if (ov->off[i] == off) return ov->val[i];
    }
}

static void ov_set(struct overlay *ov, uint64_t off, uint64_t val) {
    uint64_t i = off / 8 & (ov->cap - 1);
    while (ov->off[i] && ov->off[i] != off) i = (i + 1) & (ov->cap - 1);
    if (!ov->off[i]) ov->n++;
    ov->off[i] = off; ov->val[i] = val;
}

struct batch {
    pm_index *x;
    struct overlay ov;
    struct reservation *res; uint32_t nres;     /* new blocks */
    struct reservation *fre; uint32_t nfree;    /* freed blocks */
    struct pmd_redo_entry *e; uint32_t n, cap;  /* reservation and free entries */
    struct pmi_range *data; uint32_t ndata;
};

static int is_new(const struct batch *b, uint64_t r) {
    for (uint32_t k = 0; k < b->nres; k++) if (b->res[k].off == r) return 1;
    return 0;
}

/* b_set -- a link word set by the batch's commit: a new record's too (L8). */
static void b_set(struct batch *b, uint64_t off, uint64_t v) { ov_set(&b->ov, off, v); }

static uint64_t b_find(struct batch *b, const uint8_t *key, uint32_t klen, uint64_t preds[PMD_OBJ_MAX_HEIGHT]) {
    pm_heap *h = b->x->h;
    uint64_t r = b->x->head_off;
    for (int lvl = PMD_OBJ_MAX_HEIGHT - 1; lvl >= 0; lvl--) {
        for (;;) {
            uint64_t nx = ov_load(h, &b->ov, next_word(r, (uint32_t)lvl));
            if (!nx || key_cmp(h, nx, key, klen) >= 0) break;
            r = nx;
        }
        preds[lvl] = r;
    }
    uint64_t nx = ov_load(h, &b->ov, next_word(preds[0], 0));
    return nx && key_cmp(h, nx, key, klen) == 0 ? nx : 0;
}

/* b_op -- stage one op; returns 1 created, 0 replaced/deleted, or a negative code. */
static int b_op(struct batch *b, struct pm_index_op *op) {
    pm_index *x = b->x;
    pm_heap *h = x->h;
    uint64_t preds[PMD_OBJ_MAX_HEIGHT];
    uint64_t old = b_find(b, op->key, op->klen, preds);
    if (old && is_new(b, old)) return PM_E_ARG;                   /* a key twice in one commit */
    if (op->kind == 1) {
        if (!old) return op->cond == PM_COND_ETAG ? PM_E_PRECONDITION : PM_E_NOT_FOUND;
        if (!cond_ok(h, old, op->cond, op->match_etag)) return PM_E_PRECONDITION;
        if (b->n + 4 > b->cap) return PM_E_TOO_BIG;
        int rc = free_entries(h, old, b->fre, &b->nfree, b->e, &b->n);
        if (rc) return rc;
        for (uint32_t l = 0; l < rec_height(h, old); l++)
            b_set(b, next_word(preds[l], l), ov_load(h, &b->ov, next_word(old, l)));
        return 0;
    }
    if (op->klen < 1 || op->klen > PMD_OBJ_KEY_MAX || op->ctlen > PMD_OBJ_CTYPE_MAX) return PM_E_ARG;
    if (!cond_ok(h, old, op->cond, op->match_etag)) return PM_E_PRECONDITION;
    if (b->n + 8 > b->cap) return PM_E_TOO_BIG;
    uint32_t height = old ? rec_height(h, old) : random_height(x);
    int inl = op->vlen <= PMD_OBJ_INLINE_MAX;
    uint64_t meta = rec_meta_size(height, inl, op->vlen, op->klen, op->ctlen);
    uint32_t r0 = b->nres, n0 = b->n;
    int rc = pmi_reserve(h, rec_block_size(height, meta + (inl ? op->vlen : 0)), &b->res[b->nres], b->e, &b->n);
    if (rc) return rc;
    b->nres++;
    if (!inl && (rc = pmi_reserve(h, op->vlen, &b->res[b->nres], b->e, &b->n))) {
        pmi_unreserve(h, &b->res[r0]); b->nres = r0; b->n = n0;
        return rc;
    }
    if (!inl) b->nres++;
    uint64_t r = b->res[r0].off, voff = inl ? r + meta : b->res[r0 + 1].off;
    uint64_t nexts[PMD_OBJ_MAX_HEIGHT];
    for (uint32_t l = 0; l < height; l++) nexts[l] = ov_load(h, &b->ov, next_word(old ? old : preds[l], l));
    record_write(h, r, voff, height, nexts, op->key, op->klen, op->ctype, op->ctlen, op->value, op->vlen,
                 pm_crc32c(0, op->value, op->vlen), op->etag, op->mtime_ns);
#ifndef PMSTORE_MUTANT_DATALINKS
    for (uint32_t l = 0; l < height; l++) b_set(b, next_word(r, l), nexts[l]);
#endif
    b->ndata += record_ranges(r, height, meta, inl, voff, op->vlen, b->data + b->ndata);
    if (old && (rc = free_entries(h, old, b->fre, &b->nfree, b->e, &b->n))) return rc;
    for (uint32_t l = 0; l < height; l++) b_set(b, next_word(preds[l], l), r);
    return old ? 0 : 1;
}

/* pm_index_apply -- n puts and deletes (each key at most once) in ONE redo commit.
 * atomic: the first failing op aborts all (nothing applied; its result says why); an
 * unconditional delete of an absent key is skipped (result PM_E_NOT_FOUND), not a failure.
 * Otherwise failing ops (preconditions) are skipped and the rest commit: that is group
 * commit, many writers' ops sharing one commit's barriers. */
static int apply_locked(pm_index *x, struct pm_index_op *ops, uint32_t n, int atomic);

int pm_index_apply(pm_index *x, struct pm_index_op *ops, uint32_t n, int atomic) {
    pthread_mutex_lock(&x->wlock);
    int rc = apply_locked(x, ops, n, atomic);
    pthread_mutex_unlock(&x->wlock);
    return rc;
}

/* apply_locked -- pm_index_apply's body; pre: x->wlock held. */
static int apply_locked(pm_index *x, struct pm_index_op *ops, uint32_t n, int atomic) {
    pm_heap *h = x->h;
    uint32_t cap = h->lane_capacity;
    struct batch b = {x, {0, 0, NULL, NULL}, NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0};
    b.ov.cap = 64;
    while (b.ov.cap < 4ull * n * (PMD_OBJ_MAX_HEIGHT + 1)) b.ov.cap *= 2;
    b.ov.off = calloc(b.ov.cap, 8); b.ov.val = calloc(b.ov.cap, 8);
    b.res = malloc(2ull * n * sizeof *b.res); b.fre = malloc(2ull * n * sizeof *b.fre);
    b.e = malloc(cap * sizeof *b.e); b.cap = cap; b.data = malloc(3ull * n * sizeof *b.data);
    int rc = PM_OK;
    if (!b.ov.off || !b.ov.val || !b.res || !b.fre || !b.e || !b.data) { rc = PM_E_NOMEM; goto done; }
    uint32_t applied = 0, created = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t res0 = b.nres, fre0 = b.nfree, n0 = b.n, d0 = b.ndata;
        int r = b_op(&b, &ops[i]);
        ops[i].result = r;
        if (r < 0) {
            /* undo this op's staging (its overlay SETs were made only on success) */
            for (uint32_t k = res0; k < b.nres; k++) pmi_unreserve(h, &b.res[k]);
            b.nres = res0; b.nfree = fre0; b.n = n0; b.ndata = d0;
            /* in a batch, deleting an absent key without if_match is a no-op, not a failure */
            int absent_delete = r == PM_E_NOT_FOUND && ops[i].kind == 1 && ops[i].cond == PM_COND_NONE;
            if ((atomic && !absent_delete) || r == PM_E_TOO_BIG || r == PM_E_NEED_GROW || r == PM_E_NOMEM) {
                rc = r;
                break;
            }
            continue;
        }
        applied++;
        created += r == 1;
    }
    if (!rc && applied) {
        /* entries: reservations and frees, then the overlay's SETs */
        if (b.n + b.ov.n > cap) rc = PM_E_TOO_BIG;
        for (uint64_t i = 0; !rc && i < b.ov.cap; i++)
            if (b.ov.off[i]) b.e[b.n++] = (struct pmd_redo_entry){b.ov.off[i] | PMD_REDO_OP_SET, b.ov.val[i]};
        if (!rc) rc = pmi_redo_commit(h, b.e, b.n, b.data, b.ndata);   /* durable: all of the ops, or none */
    }
    if (rc) {
        for (uint32_t k = 0; k < b.nres; k++) pmi_unreserve(h, &b.res[k]);
        if (rc != PM_E_PRECONDITION && rc != PM_E_NOT_FOUND && rc != PM_E_ARG)
            for (uint32_t i = 0; i < n; i++) if (ops[i].result >= 0) ops[i].result = rc;
    } else if (applied) {
        for (uint32_t k = 0; k < b.nres; k++) pmi_reserved_committed(h, &b.res[k]);
        for (uint32_t i = 0; i < n; i++) {
            if (ops[i].result < 0) continue;
            if (ops[i].kind == 1) tab_del(x, ops[i].key, ops[i].klen);
        }
        /* new records: find each put's record through the level-0 list position */
        for (uint32_t i = 0; i < n; i++) {
            if (ops[i].result < 0 || ops[i].kind == 1) continue;
            uint64_t preds[PMD_OBJ_MAX_HEIGHT];
            uint64_t r = find_preds(x, ops[i].key, ops[i].klen, preds);
            if (r) tab_put(x, ops[i].key, ops[i].klen, r);
        }
        atomic_fetch_add(&x->count, created);
        uint32_t deleted = 0;
        for (uint32_t i = 0; i < n; i++) deleted += ops[i].result == 0 && ops[i].kind == 1;
        atomic_fetch_sub(&x->count, deleted);
        atomic_fetch_add_explicit(&x->version, 1, memory_order_release);
        for (uint32_t k = 0; k < b.nfree; k++) pmi_released(h, &b.fre[k]);
    }
done:
    free(b.ov.off); free(b.ov.val); free(b.res); free(b.fre); free(b.e); free(b.data);
    return rc;
}

/* ------------------------------------------------------------------ group commit */

#define GQ_MAX 64

void pm_index_set_group(pm_index *x, uint32_t limit) { x->gq_limit = limit > GQ_MAX ? GQ_MAX : limit; }
uint32_t pm_index_writer_enter(pm_index *x) { return atomic_fetch_add(&x->writers, 1); }
void pm_index_writer_leave(pm_index *x) { atomic_fetch_sub(&x->writers, 1); }

uint32_t pm_index_group_queued(pm_index *x) {
    pthread_mutex_lock(&x->gq_lock);
    uint32_t n = x->gq_n;
    pthread_mutex_unlock(&x->gq_lock);
    return n;
}

static int same_key(const struct pm_index_op *a, const struct pm_index_op *b) {
    return a->klen == b->klen && memcmp(a->key, b->key, a->klen) == 0;
}

/* A writer waiting in pm_index_submit sleeps on its own futex word, woken alone when its
 * op is done or when it is handed the lead (8 writers on 2 cores: one shared condition
 * variable cost ~3 context switches per put). The waker stores the word, then wakes it
 * after releasing gq_lock, so the woken writer does not sleep again on that lock. */
enum { GQ_WAIT, GQ_DONE, GQ_LEAD };
struct gq_waiter {
    struct pm_index_op *op;
    _Atomic uint32_t state;     /* GQ_WAIT, or what the last waker told it */
};

static void gq_sleep(_Atomic uint32_t *w) {
    while (atomic_load_explicit(w, memory_order_acquire) == GQ_WAIT)
        syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, GQ_WAIT, NULL, NULL, 0);
}

/* gq_wake -- wake the writer sleeping on w. Safe after the writer has left: a futex wake
 * touches no memory, at worst it wakes a later waiter on the same address early. */
static void gq_wake(_Atomic uint32_t *w) { syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0); }

/* pm_index_submit -- group commit (FORMAT.md 8): queue op; a waiting writer that finds no
 * leader becomes one and applies up to `limit` queued ops with distinct keys in ONE
 * pm_index_apply (one commit, one barrier), then hands the lead to the oldest writer
 * still queued and wakes the writers whose ops it applied; it leads again if its own op
 * was left for a later group. Writers wait here with the GIL released, so the next group
 * gathers while the device is busy with this one. Returns op->result. */
int pm_index_submit(pm_index *x, struct pm_index_op *op, uint32_t limit) {
    if (limit < 1) limit = 1;
    if (limit > GQ_MAX) limit = GQ_MAX;
    struct gq_waiter me = {op, GQ_WAIT};
    pthread_mutex_lock(&x->gq_lock);
    if (x->gq_n == x->gq_cap) {
        uint32_t cap = x->gq_cap ? 2 * x->gq_cap : 64;
        struct gq_waiter **q = realloc(x->gq, cap * sizeof *q);
        if (!q) { pthread_mutex_unlock(&x->gq_lock); return PM_E_NOMEM; }
        x->gq = q; x->gq_cap = cap;
    }
    x->gq[x->gq_n++] = &me;
    int lead = 0;
    for (;;) {      /* holding gq_lock */
        uint32_t st = atomic_load_explicit(&me.state, memory_order_acquire);
        if (st == GQ_DONE) break;   /* op->result is set */
        if (st == GQ_LEAD) { lead = 1; atomic_store_explicit(&me.state, GQ_WAIT, memory_order_relaxed); }
        if (!lead && x->gq_leader) {
            pthread_mutex_unlock(&x->gq_lock);
            gq_sleep(&me.state);
            pthread_mutex_lock(&x->gq_lock);
            continue;
        }
        lead = 0;
        x->gq_leader = 1;
        /* the writer lock first: while a commit is in flight (a lone writer's, or the
         * batch's) the queue keeps growing, and this group takes all of it */
        pthread_mutex_unlock(&x->gq_lock);
        pthread_mutex_lock(&x->wlock);
        pthread_mutex_lock(&x->gq_lock);
        struct gq_waiter *mine[GQ_MAX];
        struct pm_index_op group[GQ_MAX];
        uint32_t k = 0, keep = 0;
        for (uint32_t i = 0; i < x->gq_n; i++) {     /* oldest first; a repeated key waits */
            struct gq_waiter *w = x->gq[i];
            int dup = 0;
            for (uint32_t j = 0; j < k && !dup; j++) dup = same_key(mine[j]->op, w->op);
            if (k < limit && !dup) mine[k++] = w;
            else x->gq[keep++] = w;
        }
        x->gq_n = keep;
        pthread_mutex_unlock(&x->gq_lock);
        for (uint32_t j = 0; j < k; j++) group[j] = *mine[j]->op, group[j].result = 0;
        int rc = apply_locked(x, group, k, 0);      /* durable: every op of the group that succeeded */
        pthread_mutex_unlock(&x->wlock);
        pthread_mutex_lock(&x->gq_lock);
        int own_done = 0;
        for (uint32_t j = 0; j < k; j++) own_done |= mine[j] == &me;
        struct gq_waiter *next = NULL;
        x->gq_leader = 0;
        if (own_done && x->gq_n) {  /* done: the oldest waiter leads next */
            x->gq_leader = 1;
            next = x->gq[0];
            atomic_store_explicit(&next->state, GQ_LEAD, memory_order_release);
        }
        pthread_mutex_unlock(&x->gq_lock);
        if (next) gq_wake(&next->state);
        for (uint32_t j = 0; j < k; j++) {
            struct gq_waiter *w = mine[j];
            w->op->result = rc < 0 && group[j].result >= 0 ? rc : group[j].result;
            atomic_store_explicit(&w->state, GQ_DONE, memory_order_release);   /* w may return from here on */
            if (w != &me) gq_wake(&w->state);
        }
        pthread_mutex_lock(&x->gq_lock);
    }
    pthread_mutex_unlock(&x->gq_lock);
    return op->result;
}
