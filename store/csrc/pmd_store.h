/* pmd_store.h -- on-disk structures of the object store (FORMAT.md 4.6-4.7).
 * cffi-parseable: integer #defines and plain structs only. */
#ifndef PMD_STORE_H
#define PMD_STORE_H

#define PMD_STORE_MAGIC 0x3145524F54534D50  /* "PMSTORE1" read as a little-endian u64 */
#define PMD_STORE_VERSION 3                /* 2 is read too, and raised to 3 at open (FORMAT.md 9) */
#define PMD_STORE_VERSION_OLD 2
#define PMD_OBJ_HDR_SIZE 16                 /* then next[height], then the tail */
#define PMD_OBJ_MAX_HEIGHT 16
#define PMD_OBJ_KEY_MAX 1024
#define PMD_OBJ_CTYPE_MAX 255
#define PMD_OBJ_INLINE_MAX 4096             /* values up to this size live inside the record */
#define PMD_OBJ_HEIGHT_MASK 31              /* height_flags bits 0-4 */
#define PMD_OBJ_FLAG_INLINE 128             /* height_flags bit 7: the value follows the content type */
#define PMD_OBJ_FLAG_MD5_DERIVED 32         /* height_flags bit 5: a small inline value's ETag is not stored */
#define PMD_OBJ_FLAGS_RESERVED 64           /* height_flags bit 6: 0 */
#define PMD_OBJ_TAIL_INLINE 18              /* sizeof(struct pmd_tail_inline) */
#define PMD_OBJ_SMALL_MAX 256               /* an inline value up to this size has no stored CRC32C */
#define PMD_OBJ_TAIL_EXT 36                 /* sizeof(struct pmd_tail_ext) */

struct pmd_store_super {
    uint64_t magic;             /* PMD_STORE_MAGIC */
    uint32_t version;           /* PMD_STORE_VERSION */
    uint32_t reserved0;         /* 0 */
    uint64_t head_off;          /* the skip list's head record */
    uint64_t created_ns;        /* wall clock at create */
    uint8_t  reserved[32];      /* 0 */
};

struct pmd_object {             /* FORMAT.md 4.7 */
    uint32_t crc32c;            /* of: the value's CRC32C (4 bytes LE), bytes [4, 16), the tail through the ctype */
    uint8_t  height_flags;      /* bits 0-4 height 1..16; PMD_OBJ_FLAG_MD5_DERIVED, PMD_OBJ_FLAG_INLINE */
    uint8_t  ctype_size;        /* bytes of content type, 0..255 */
    uint16_t key_size;          /* bytes, 1..1024 (0 for the head) */
    uint64_t mtime_ns;          /* last modified, ns since the Unix epoch */
};                              /* then uint64_t next[height], then the tail */

/* The tails at t = 16 + 8 * height (8-aligned). Their fields sit at their natural
 * offsets; the key starts right after etag: PMD_OBJ_TAIL_* bytes (not sizeof, which
 * pads pmd_tail_ext to 40). */
struct pmd_tail_inline {        /* value <= 4096 bytes; then u32 value_crc32c if the value is */
    uint16_t value_size;        /* over PMD_OBJ_SMALL_MAX bytes; then key, content type, value */
    uint8_t  etag[16];          /* MD5 of the value; absent (the key follows value_size) when */
};                              /* the record has PMD_OBJ_FLAG_MD5_DERIVED */

struct pmd_tail_ext {           /* value > 4096 bytes in its own block; then key, content type */
    uint64_t value_size;
    uint64_t value_off;         /* the value's block */
    uint32_t value_crc32c;      /* CRC32C of the value (I4) */
    uint8_t  etag[16];          /* MD5 of the value */
};

#endif
