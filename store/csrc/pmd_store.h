/* pmd_store.h -- on-disk structures of the object store (FORMAT.md 4.6-4.7).
 * cffi-parseable: integer #defines and plain structs only. */
#ifndef PMD_STORE_H
#define PMD_STORE_H

#define PMD_STORE_MAGIC 0x3145524F54534D50  /* "PMSTORE1" read as a little-endian u64 */
#define PMD_STORE_VERSION 1
#define PMD_OBJ_MAGIC 1245859664            /* "POBJ" read as a little-endian u32 */
#define PMD_HEAD_MAGIC 1145391184           /* "PHED" read as a little-endian u32 */
#define PMD_OBJ_HDR_SIZE 64
#define PMD_OBJ_MAX_HEIGHT 16
#define PMD_OBJ_KEY_MAX 1024
#define PMD_OBJ_CTYPE_MAX 255
#define PMD_OBJ_INLINE_MAX 4096             /* values up to this size live inside the record */
#define PMD_OBJ_FLAG_INLINE 1

struct pmd_store_super {
    uint64_t magic;             /* PMD_STORE_MAGIC */
    uint32_t version;           /* PMD_STORE_VERSION */
    uint32_t reserved0;         /* 0 */
    uint64_t head_off;          /* the skip list's head record */
    uint64_t created_ns;        /* wall clock at create */
    uint8_t  reserved[32];      /* 0 */
};

struct pmd_object {
    uint32_t magic;             /* PMD_OBJ_MAGIC, or PMD_HEAD_MAGIC for the head */
    uint8_t  height;            /* next[] words after the header, 1..16 */
    uint8_t  flags;             /* PMD_OBJ_FLAG_INLINE: the value follows the content type */
    uint16_t key_size;          /* bytes, 1..1024 (0 for the head) */
    uint64_t value_size;        /* bytes */
    uint64_t value_off;         /* the value's own block; 0 when inline */
    uint64_t mtime_ns;          /* last modified, ns since the Unix epoch */
    uint32_t value_crc32c;      /* CRC32C of the value */
    uint16_t ctype_size;        /* bytes of content type, 0..255 */
    uint16_t reserved0;         /* 0 */
    uint8_t  etag[16];          /* MD5 of the value */
    uint32_t hdr_crc32c;        /* CRC32C of bytes [0, 56), the key and the content type */
    uint32_t reserved1;         /* 0 */
};

#endif
