/* pmd.h -- on-disk structures of the heap file (FORMAT.md is the source of truth).
 *
 * Every struct here is a byte-for-byte transcription of a FORMAT.md table; grepping
 * `pmd_` finds every touch of persistent bytes. Persistent structs hold offsets
 * (`_off`, bytes from the start of the file, 0 = null), never pointers.
 * tests/unit/test_layout.py keeps these, allocator/layout.py and FORMAT.md in agreement.
 * This file must stay parseable by cffi's cdef: integer #defines and plain structs only.
 */
#ifndef PMD_H
#define PMD_H

#define PMD_FORMAT_VERSION 2
#define PMD_MAGIC 0x5041454854534D50        /* "PMSTHEAP" read as a little-endian u64 */
#define PMD_HEADER_SIZE 256                 /* bytes used by one header copy */
#define PMD_HEADER_A_OFF 0                  /* header copy A, its own OS page */
#define PMD_HEADER_B_OFF 4096               /* header copy B, its own OS page */
#define PMD_ROOT_OFF 8192                   /* the root word (u64 offset), written only by redo apply */
#define PMD_REDO_OFF 12288                  /* first redo lane */
#define PMD_OS_PAGE_SIZE 4096
#define PMD_PAGE_SIZE 65536                 /* allocator page */
#define PMD_LANE_HDR_SIZE 16                /* seal + seq; entries follow, the first three in the same line */
#define PMD_REDO_ENTRY_SIZE 16
#define PMD_REDO_OP_SET 0                   /* word = value */
#define PMD_REDO_OP_OR 1                    /* word |= value (bit set) */
#define PMD_REDO_OP_ANDNOT 2                /* word &= ~value (bit clear) */
#define PMD_REDO_OP_CHECK 3                 /* not applied: value = (size << 32) | crc32c of [off, off+size) */
#define PMD_REDO_OP_MASK 7                  /* op lives in the low 3 bits of off_op */

/* Allocator (FORMAT.md 4.4, 4.5, 5): one 8-byte descriptor per 64 KiB page at meta_off;
 * a class run starts with its allocation bitmap. */
#define PMD_DESC_SIZE 8
#define PMD_DESC_FREE 0                     /* kind: not part of any allocation */
#define PMD_DESC_RUN 1                      /* kind: head of a run of blocks of one class */
#define PMD_DESC_SPAN 2                     /* kind: head of one large object */
#define PMD_DESC_KIND_MASK 255              /* bits 0-7: kind */
#define PMD_DESC_CLASS_SHIFT 8              /* bits 8-15: class index (RUN) */
#define PMD_DESC_PAGES_SHIFT 16             /* bits 16-47: pages in the run or span */
#define PMD_RUN_BITMAP_SIZE 512             /* bytes at the start of a run: one bit per block */
#define PMD_CLASS_TABLE_ID 2                /* the size-class table below; bump on any change */
#define PMD_CLASS_COUNT 95                 /* classes in the table (FORMAT.md 5) */
#define PMD_CLASS_MAX_SIZE 65536            /* larger requests take a span of whole pages */

struct pmd_header {
    uint64_t magic;             /* PMD_MAGIC */
    uint32_t format_version;    /* PMD_FORMAT_VERSION */
    uint32_t header_size;       /* bytes, PMD_HEADER_SIZE */
    uint8_t  uuid[16];          /* random at create, never changes */
    uint64_t generation;        /* count of header writes; the newer valid copy wins */
    uint64_t file_size;         /* bytes of the file that belong to the heap */
    uint64_t max_size;          /* bytes the file may grow to */
    uint32_t page_size;         /* bytes, PMD_PAGE_SIZE */
    uint32_t lane_count;        /* redo lanes */
    uint32_t lane_size;         /* bytes per lane, multiple of 4096 */
    uint32_t class_table_id;    /* size-class table the allocator was built with, 0 = none */
    uint64_t root_off;          /* offset of the root word, PMD_ROOT_OFF */
    uint64_t redo_off;          /* offset of lane 0, PMD_REDO_OFF */
    uint64_t meta_off;          /* offset of the allocator metadata region */
    uint64_t data_off;          /* offset of the first allocator page, page-aligned */
    uint64_t created_ns;        /* wall clock at create, ns since the epoch */
    uint32_t clean_shutdown;    /* 1 = closed cleanly, 0 = open or crashed */
    uint32_t flags;             /* reserved, 0 */
    uint64_t journal_size;      /* bytes of the barrier journal after the lanes, 0 = none */
    uint8_t  reserved[124];     /* 0 */
    uint32_t crc32c;            /* CRC32C of bytes [0, 252) */
};

#define PMD_JNL_HDR_SIZE 4096               /* journal header page: the epoch word, then zeros */
#define PMD_JNL_REC_HDR_SIZE 24             /* a journal record's header; ranges and bytes follow */

struct pmd_jnl_rec {
    uint32_t crc32c;            /* CRC32C of (le64 epoch, bytes [4, size) of the record) */
    uint32_t size;              /* bytes of the record, a multiple of 8 */
    uint64_t seq;               /* 0, 1, 2, ... within the epoch */
    uint32_t range_count;       /* {u64 off, u64 size} pairs after this header */
    uint32_t reserved;          /* 0 */
};

struct pmd_lane_hdr {
    uint64_t seal;              /* 0 = empty; else (crc32c << 32) | entry_count */
    uint64_t seq;               /* commit sequence number, orders replay */
};

struct pmd_redo_entry {
    uint64_t off_op;            /* 8-aligned offset of the target word | op (low 3 bits) */
    uint64_t value;             /* value for SET, mask for OR / ANDNOT */
};

#endif
