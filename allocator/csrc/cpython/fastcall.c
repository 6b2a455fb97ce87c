/* allocator._fast: the hot pair (pm_alloc_into, pm_free_from; and pm_free, and alloc_into
 * with no word) as plain CPython methods,
 * a transaction's calls (pm_tx_reserve, pm_tx_locate, pm_tx_commit, pm_tx_abort, and the
 * pm_load8 and unpersisted pm_write they lean on), the heap's byte reads (pm_read, and
 * views of the mapping), and the store's common read, head,
 * put and list (pm_index_read, pm_index_get, pm_index_put_plain, pm_index_list) as
 * functions, building their results in C.
 *
 * Through cffi a call cost about 0.3 us here (an argument tuple, errno kept in a
 * thread-state dict, the GIL released and retaken) and the Python method around it
 * more; a pair from C costs about 0.6 us with flushes. A Hot object's bound methods
 * are the API's alloc_into/free_from themselves: no Python frame unless a call fails,
 * and then on_error (Python) raises, or grows the heap and retries.
 *
 * The GIL: released around each call only when release_gil is set (the msync
 * backend, whose barrier is a system call). Elsewhere a call takes a fraction of a
 * microsecond while handing the GIL to a waiting thread takes several: Python threads
 * that released it around every call ran 6x slower together than one alone (16 threads
 * on 16 cores: 0.1 M alloc/free pairs/s, against 0.66 M for one thread). No C lock
 * is held between calls (every lock in allocator/csrc is taken and released inside
 * one call, by threads that never need the GIL), so holding it cannot deadlock.
 *
 * The store's calls keep the GIL only for small values (GIL_COPY_MAX: copying, hashing
 * and checksumming them takes less than a GIL hand-over): a read tries a buffer of that
 * size first and, for a larger value, releases the GIL and reads again, straight into
 * the bytes object it returns.
 *
 * The C functions come in as addresses from the cffi module (bind), so there is one
 * copy of the allocator and of its thread-local state.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "pm_index_api.h"   /* and pm_api.h: the functions' types and the PM_E_* codes */

/* The cffi module's functions this module calls: c_<name> points at pm_<name> once bind
 * has run. One list: the pointers, bind and the FUNCTIONS tuple _native binds from. */
#define FAST_FUNCTIONS(X) X(alloc_into) X(free_from) X(index_read) X(index_put_plain) X(index_list) \
    X(index_get) X(tx_reserve) X(tx_locate) X(tx_commit) X(tx_abort) X(heap_size) X(heap_base) X(load8) \
    X(write) X(read) X(free)
#define FAST_POINTER(name) static __typeof__(pm_##name) *c_##name;
FAST_FUNCTIONS(FAST_POINTER)

#define GIL_COPY_MAX 1024   /* bytes: store calls on values up to this keep the GIL */

/* stmt, with the GIL released around it only where the Hot says so (release_gil) */
#define HOT_CALL(self, stmt) do {                       \
        if ((self)->release_gil) {                      \
            Py_BEGIN_ALLOW_THREADS stmt; Py_END_ALLOW_THREADS \
        } else {                                        \
            stmt;                                       \
        }                                               \
    } while (0)

typedef struct {
    PyObject_HEAD
    pm_heap *h;             /* NULL once closed */
    int release_gil;
    PyObject *on_error;     /* on_error(op, dest_off, size, rc): raises, or returns the result */
} Hot;

enum { OP_ALLOC_INTO = 0, OP_FREE_FROM = 1, OP_ALLOC = 2, OP_FREE = 3 };   /* on_error's op */

/* The slow path: a closed heap, a bad argument (its exception dropped: on_error words
 * it) or a negative code. */
static PyObject *failed(Hot *self, int op, PyObject *dest, PyObject *size, long long rc)
{
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        rc = PM_E_ARG;
    }
    if (!self->on_error) {
        PyErr_SetString(PyExc_RuntimeError, "allocator._fast.Hot has no on_error");
        return NULL;
    }
    PyObject *rc_obj = PyLong_FromLongLong(rc), *op_obj = PyLong_FromLong(op);
    PyObject *res = NULL;
    if (rc_obj && op_obj)
        res = PyObject_CallFunctionObjArgs(self->on_error, op_obj, dest, size, rc_obj, NULL);
    Py_XDECREF(rc_obj);
    Py_XDECREF(op_obj);
    return res;
}

/* alloc_into(dest_off, size) and alloc(size) (dest NULL: no word) -> block offset */
static PyObject *alloc_common(Hot *self, int op, PyObject *dest_obj, PyObject *size_obj)
{
    unsigned long long dest = dest_obj ? PyLong_AsUnsignedLongLong(dest_obj) : 0, size = 0;
    if (!(dest == (unsigned long long)-1 && PyErr_Occurred())) size = PyLong_AsUnsignedLongLong(size_obj);
    PyObject *dest_arg = dest_obj ? dest_obj : Py_None;
    pm_heap *h = self->h;
    if (PyErr_Occurred() || !h) return failed(self, op, dest_arg, size_obj, PM_E_ARG);
    int64_t off;
    HOT_CALL(self, off = c_alloc_into(h, dest, size));
    if (off < 0) return failed(self, op, dest_arg, size_obj, off);
    return PyLong_FromLongLong(off);
}

static PyObject *hot_alloc_into(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "alloc_into(dest_off, size)");
        return NULL;
    }
    return alloc_common(self, OP_ALLOC_INTO, args[0], args[1]);
}

static PyObject *hot_alloc(Hot *self, PyObject *size) { return alloc_common(self, OP_ALLOC, NULL, size); }

/* free_from(dest_off) and free(off) -> None */
static PyObject *free_common(Hot *self, int op, PyObject *off_obj)
{
    unsigned long long off = PyLong_AsUnsignedLongLong(off_obj);
    pm_heap *h = self->h;
    if (PyErr_Occurred() || !h) return failed(self, op, off_obj, Py_None, PM_E_ARG);
    int rc;
    HOT_CALL(self, rc = op == OP_FREE ? c_free(h, off) : c_free_from(h, off));
    if (rc < 0) return failed(self, op, off_obj, Py_None, rc);
    Py_RETURN_NONE;
}

static PyObject *hot_free_from(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 1) {
        PyErr_SetString(PyExc_TypeError, "free_from(dest_off)");
        return NULL;
    }
    return free_common(self, OP_FREE_FROM, args[0]);
}

static PyObject *hot_free(Hot *self, PyObject *off) { return free_common(self, OP_FREE, off); }

/* A transaction's calls (allocator/transaction.py), with the GIL policy of the hot pair:
 * through cffi each released it, and two Python threads running transactions on /dev/shm
 * did a third of one thread's work together, handing the GIL over at every call. Slots
 * (struct pm_tx_slot) and entries (struct pmd_redo_entry) travel as bytes; a failure
 * comes back as its negative PM_E_* code, which the caller raises. */
#define TX_ENTRIES_MAX 4    /* pm_tx_reserve writes at most 4 entries, pm_tx_locate 2 */

static PyObject *tuple_of(PyObject **items, int n);

/* tx_reserve(size) -> (slot, entries), or a negative code; tx_locate(off) likewise */
static PyObject *hot_tx_slot(Hot *self, PyObject *const *args, Py_ssize_t n, int reserve)
{
    if (n != 1) {
        PyErr_SetString(PyExc_TypeError, reserve ? "tx_reserve(size)" : "tx_locate(off)");
        return NULL;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(args[0]);
    if (PyErr_Occurred()) return NULL;
    pm_heap *h = self->h;
    if (!h) return PyLong_FromLong(PM_E_ARG);
    struct pm_tx_slot slot;
    struct pmd_redo_entry e[TX_ENTRIES_MAX];
    uint32_t count = 0;
    int rc;
    HOT_CALL(self, rc = reserve ? c_tx_reserve(h, v, &slot, e, &count) : c_tx_locate(h, v, &slot, e, &count));
    if (rc < 0) return PyLong_FromLong(rc);
    PyObject *items[2] = {PyBytes_FromStringAndSize((const char *)&slot, sizeof slot),
                          PyBytes_FromStringAndSize((const char *)e, (Py_ssize_t)(count * sizeof *e))};
    return tuple_of(items, 2);
}

static PyObject *hot_tx_reserve(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    return hot_tx_slot(self, args, n, 1);
}

static PyObject *hot_tx_locate(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    return hot_tx_slot(self, args, n, 0);
}

/* bytes_arg -- a bytes argument as a pointer and a count of elem-byte items. */
static int bytes_arg(PyObject *o, size_t elem, const void **p, uint32_t *count)
{
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(o, &buf, &len) < 0) return -1;
    if (len % (Py_ssize_t)elem || (size_t)len / elem > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a transaction's buffer is not a whole number of items");
        return -1;
    }
    *p = buf;
    *count = (uint32_t)((size_t)len / elem);
    return 0;
}

/* tx_commit(entries, data, reserved, freed) -> 0 or a negative code. data: (off, size)
 * pairs of little-endian uint64; reserved, freed: slots as tx_reserve and tx_locate gave. */
static PyObject *hot_tx_commit(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 4) {
        PyErr_SetString(PyExc_TypeError, "tx_commit(entries, data, reserved, freed)");
        return NULL;
    }
    const void *e, *data, *res, *fre;
    uint32_t ne, ndata, nres, nfree;
    if (bytes_arg(args[0], sizeof(struct pmd_redo_entry), &e, &ne) < 0
        || bytes_arg(args[1], 16, &data, &ndata) < 0
        || bytes_arg(args[2], sizeof(struct pm_tx_slot), &res, &nres) < 0
        || bytes_arg(args[3], sizeof(struct pm_tx_slot), &fre, &nfree) < 0)
        return NULL;
    pm_heap *h = self->h;
    if (!h) return PyLong_FromLong(PM_E_ARG);
    int rc;
    HOT_CALL(self, rc = c_tx_commit(h, e, ne, data, ndata, res, nres, fre, nfree));
    return PyLong_FromLong(rc);
}

/* tx_abort(reserved) */
static PyObject *hot_tx_abort(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 1) {
        PyErr_SetString(PyExc_TypeError, "tx_abort(reserved)");
        return NULL;
    }
    const void *res;
    uint32_t nres;
    if (bytes_arg(args[0], sizeof(struct pm_tx_slot), &res, &nres) < 0) return NULL;
    if (self->h && nres) c_tx_abort(self->h, res, nres);
    Py_RETURN_NONE;
}

/* load8(off) -> the word, or None for an offset outside the heap or misaligned (or a
 * closed heap): the caller raises. One aligned load, so it never releases the GIL. */
static PyObject *hot_load8(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 1) {
        PyErr_SetString(PyExc_TypeError, "load8(off)");
        return NULL;
    }
    unsigned long long off = PyLong_AsUnsignedLongLong(args[0]);
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
        PyErr_Clear();      /* negative */
        Py_RETURN_NONE;
    }
    pm_heap *h = self->h;
    if (!h || off % 8 || off > c_heap_size(h) - 8) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(c_load8(h, off));
}

/* write(off, data) -> 0 or a negative PM_E_* code: a copy into the mapping, nothing made
 * durable (tx.write, and Heap.write with persist=False), with the GIL policy above. */
static PyObject *hot_write(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "write(off, data)");
        return NULL;
    }
    unsigned long long off = PyLong_AsUnsignedLongLong(args[0]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    int rc = PM_E_ARG;
    pm_heap *h = self->h;
    if (h) HOT_CALL(self, rc = c_write(h, off, view.buf, (uint64_t)view.len));
    PyBuffer_Release(&view);
    return PyLong_FromLong(rc);
}

/* range_args -- read's and view's (off, size): 0 with *h, *off and *size set, or -1 with
 * *ret the result to return: NULL (an exception), or a negative PM_E_* code for a closed
 * heap (PM_E_ARG) or a range outside the mapped heap (PM_E_RANGE; checked before read
 * allocates size bytes). The caller raises. */
static int range_args(Hot *self, PyObject *const *args, Py_ssize_t n, const char *usage, pm_heap **h,
                      unsigned long long *off, Py_ssize_t *size, PyObject **ret)
{
    *ret = NULL;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *off = PyLong_AsUnsignedLongLong(args[0]);
    if (PyErr_Occurred()) return -1;
    *size = PyLong_AsSsize_t(args[1]);
    if (*size == -1 && PyErr_Occurred()) return -1;
    if (!(*h = self->h)) {
        *ret = PyLong_FromLong(PM_E_ARG);
        return -1;
    }
    uint64_t heap_size = c_heap_size(*h);
    if (*size < 0 || *off > heap_size || (uint64_t)*size > heap_size - *off) {
        *ret = PyLong_FromLong(PM_E_RANGE);
        return -1;
    }
    return 0;
}

/* read(off, size) -> bytes, or a negative PM_E_* code (range_args): the caller raises.
 * The bytes object is filled in place; the GIL is released only for a copy over
 * GIL_COPY_MAX (a shorter one beats a hand-over). */
static PyObject *hot_read(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    pm_heap *h;
    unsigned long long off;
    Py_ssize_t size;
    PyObject *ret;
    if (range_args(self, args, n, "read(off, size)", &h, &off, &size, &ret) < 0) return ret;
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (!out) return NULL;
    char *dst = PyBytes_AsString(out);
    int rc;
    if (size > GIL_COPY_MAX) {
        Py_BEGIN_ALLOW_THREADS rc = c_read(h, off, dst, (uint64_t)size); Py_END_ALLOW_THREADS
    } else {
        rc = c_read(h, off, dst, (uint64_t)size);
    }
    if (rc) {
        Py_DECREF(out);
        return PyLong_FromLong(rc);
    }
    return out;
}

/* view(off, size) -> a read-only memoryview of the mapping, or a negative PM_E_* code
 * (range_args). Zero-copy and valid until close: the mapping's base never moves. */
static PyObject *hot_view(Hot *self, PyObject *const *args, Py_ssize_t n)
{
    pm_heap *h;
    unsigned long long off;
    Py_ssize_t size;
    PyObject *ret;
    if (range_args(self, args, n, "view(off, size)", &h, &off, &size, &ret) < 0) return ret;
    return PyMemoryView_FromMemory((char *)c_heap_base(h) + off, size, PyBUF_READ);
}

/* close(): later calls go to on_error with PM_E_ARG (the caller says "heap is closed") */
static PyObject *hot_close(Hot *self, PyObject *unused)
{
    self->h = NULL;
    Py_RETURN_NONE;
}

/* Hot(heap_addr, release_gil, on_error) */
static PyObject *hot_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    unsigned long long addr;
    int release_gil;
    PyObject *on_error;
    if (!PyArg_ParseTuple(args, "KpO:Hot", &addr, &release_gil, &on_error)) return NULL;
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Hot *self = (Hot *)alloc(type, 0);
    if (!self) return NULL;
    self->h = (pm_heap *)(uintptr_t)addr;
    self->release_gil = release_gil;
    Py_INCREF(on_error);
    self->on_error = on_error;
    return (PyObject *)self;
}

/* on_error is usually a bound method of the object holding this Hot: a cycle the GC breaks. */
static int hot_traverse(Hot *self, visitproc visit, void *arg)
{
    Py_VISIT(self->on_error);
    Py_VISIT(Py_TYPE((PyObject *)self));    /* a heap type: its instances keep it alive */
    return 0;
}

static int hot_clear(Hot *self)
{
    Py_CLEAR(self->on_error);
    return 0;
}

static void hot_dealloc(Hot *self)
{
    PyTypeObject *tp = Py_TYPE((PyObject *)self);
    PyObject_GC_UnTrack(self);
    hot_clear(self);
    ((freefunc)PyType_GetSlot(tp, Py_tp_free))(self);
    Py_DECREF(tp);
}

static PyMethodDef hot_methods[] = {
    {"alloc_into", (PyCFunction)(void (*)(void))hot_alloc_into, METH_FASTCALL,
     "alloc_into(dest_off, size) -> block offset (pm_alloc_into)"},
    {"free_from", (PyCFunction)(void (*)(void))hot_free_from, METH_FASTCALL,
     "free_from(dest_off) (pm_free_from)"},
    {"alloc", (PyCFunction)hot_alloc, METH_O, "alloc(size) -> block offset, published nowhere (pm_alloc_into, no word)"},
    {"free", (PyCFunction)hot_free, METH_O, "free(off): the block at off (pm_free)"},
    {"tx_reserve", (PyCFunction)(void (*)(void))hot_tx_reserve, METH_FASTCALL,
     "tx_reserve(size) -> (slot, entries) or a negative PM_E_* code (pm_tx_reserve)"},
    {"tx_locate", (PyCFunction)(void (*)(void))hot_tx_locate, METH_FASTCALL,
     "tx_locate(off) -> (slot, entries) or a negative PM_E_* code (pm_tx_locate)"},
    {"tx_commit", (PyCFunction)(void (*)(void))hot_tx_commit, METH_FASTCALL,
     "tx_commit(entries, data, reserved, freed) -> 0 or a negative PM_E_* code (pm_tx_commit)"},
    {"tx_abort", (PyCFunction)(void (*)(void))hot_tx_abort, METH_FASTCALL, "tx_abort(reserved) (pm_tx_abort)"},
    {"load8", (PyCFunction)(void (*)(void))hot_load8, METH_FASTCALL,
     "load8(off) -> the word, or None for a bad offset (pm_load8)"},
    {"write", (PyCFunction)(void (*)(void))hot_write, METH_FASTCALL,
     "write(off, data) -> 0 or a negative PM_E_* code (pm_write: copied, not persisted)"},
    {"read", (PyCFunction)(void (*)(void))hot_read, METH_FASTCALL,
     "read(off, size) -> bytes, or a negative PM_E_* code (pm_read)"},
    {"view", (PyCFunction)(void (*)(void))hot_view, METH_FASTCALL,
     "view(off, size) -> read-only memoryview of the mapping, or a negative PM_E_* code"},
    {"close", (PyCFunction)hot_close, METH_NOARGS, "forget the heap"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot hot_slots[] = {
    {Py_tp_new, hot_new},
    {Py_tp_dealloc, hot_dealloc},
    {Py_tp_traverse, hot_traverse},
    {Py_tp_clear, hot_clear},
    {Py_tp_methods, hot_methods},
    {Py_tp_doc, "Hot(heap_addr, release_gil, on_error): a heap's alloc_into/free_from, alloc/free, transaction "
                "calls, load8, write, read and view."},
    {0, NULL},
};

static PyType_Spec hot_spec = {"allocator._fast.Hot", sizeof(Hot), 0,
                               Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, hot_slots};

/* bind({name: address}): the cffi module's functions, named as in FUNCTIONS. */
static PyObject *bind(PyObject *self, PyObject *addrs)
{
    if (!PyDict_Check(addrs)) {
        PyErr_SetString(PyExc_TypeError, "bind({name: address})");
        return NULL;
    }
    PyObject *v;
    void *p;
#define FAST_BIND(name)                                                             \
    v = PyDict_GetItemString(addrs, "pm_" #name);   /* borrowed; NULL: missing */   \
    p = v ? PyLong_AsVoidPtr(v) : NULL;                                             \
    if (!p) {                                                                       \
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "bind: no address of pm_" #name); \
        return NULL;                                                                \
    }                                                                               \
    c_##name = (__typeof__(c_##name))p;
    FAST_FUNCTIONS(FAST_BIND)
    Py_RETURN_NONE;
}

/* ptr_arg -- an int argument as a pointer (None, e.g. a closed index: TypeError). */
static int ptr_arg(PyObject *o, void **out)
{
    *out = PyLong_AsVoidPtr(o);
    return !*out && PyErr_Occurred() ? -1 : 0;
}

/* index_args -- the store calls' first two arguments: the index's address and the key
 * (bytes without NUL: pm_index_read and pm_index_put_plain take it NUL-terminated). */
static int index_args(PyObject *const *args, void **x, const char **key)
{
    if (ptr_arg(args[0], x) < 0) return -1;
    *key = PyBytes_AsString(args[1]);
    return *key ? 0 : -1;
}

/* index_read(index_addr, key, small_req_addr) -> the whole value as bytes, or
 * pm_index_read's negative PM_E_* code. key: bytes without NUL (the caller checked it).
 * small_req reads into at most GIL_COPY_MAX bytes with the GIL held; a larger value (its
 * size is then in small_req's info) is read again straight into a bytes object of that
 * size, with the GIL released. Values over 2 GiB come back as PM_E_BUFFER (the caller's
 * general path reads them). */
static PyObject *read_whole(void *x, const char *key, const struct pm_read_req *sr);

/* read_args -- index_read's three arguments; 1 if the index or the request is missing
 * (a closed index: the caller returns PM_E_ARG). */
static int read_args(PyObject *const *args, void **x, const char **key, const struct pm_read_req **sr)
{
    void *small;
    if (index_args(args, x, key) < 0 || ptr_arg(args[2], &small) < 0) return -1;
    *sr = small;
    return !*x || !small;
}

static PyObject *index_read(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "index_read(index_addr, key, small_req_addr)");
        return NULL;
    }
    void *x;
    const char *key;
    const struct pm_read_req *sr;
    int bad = read_args(args, &x, &key, &sr);
    if (bad) return bad < 0 ? NULL : PyLong_FromLong(PM_E_ARG);
    return read_whole(x, key, sr);
}

/* read_whole -- index_read's work: the value as bytes, or a PM_E_* code as an int. */
static PyObject *read_whole(void *x, const char *key, const struct pm_read_req *sr)
{
    int rc = c_index_read(x, key, sr);
    while (rc == PM_E_BUFFER && sr->info->value_size <= INT32_MAX) {
        uint64_t size = sr->info->value_size;
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);    /* not shared yet: ours to fill */
        if (!b) return NULL;
        struct pm_read_req r = {(uint8_t *)PyBytes_AsString(b), size, 0, UINT64_MAX, sr->info, sr->value_only, 0};
        Py_BEGIN_ALLOW_THREADS
        rc = c_index_read(x, key, &r);
        Py_END_ALLOW_THREADS
        if (rc >= 0 && (uint64_t)rc == size) return b;
        if (rc >= 0) {      /* replaced meanwhile by a smaller value */
            PyObject *part = PyBytes_FromStringAndSize(PyBytes_AsString(b), rc);
            Py_DECREF(b);
            return part;
        }
        Py_DECREF(b);       /* replaced by a larger one (again), or gone */
    }
    if (rc < 0) return PyLong_FromLong(rc);
    return PyBytes_FromStringAndSize((const char *)sr->dst, rc);
}

static __thread struct pm_obj_info tl_put_info;     /* pm_index_put_plain's out, per thread */

/* etag_hex -- the 16-byte etag as 32 lowercase hex digits, a str. */
static PyObject *etag_hex(const uint8_t *etag)
{
    static const char digits[] = "0123456789abcdef";
    char hex[32];
    for (int i = 0; i < 16; i++) hex[2 * i] = digits[etag[i] >> 4], hex[2 * i + 1] = digits[etag[i] & 15];
    return PyUnicode_FromStringAndSize(hex, 32);
}

/* tuple_of -- a tuple of n new references (each may be NULL: an error, all released). */
static PyObject *tuple_of(PyObject **items, int n)
{
    PyObject *t = PyTuple_New(n);
    for (int i = 0; i < n; i++) {
        if (!t || !items[i]) {
            for (int k = i; k < n; k++) Py_XDECREF(items[k]);
            Py_XDECREF(t);
            return NULL;
        }
        PyTuple_SetItem(t, i, items[i]);    /* steals it */
    }
    return t;
}

/* put_result -- (mtime_ns, crc32c, etag as hex, created) from the put's info. */
static PyObject *put_result(const struct pm_obj_info *info, int created)
{
    PyObject *items[4] = {PyLong_FromUnsignedLongLong(info->mtime_ns), PyLong_FromUnsignedLong(info->value_crc32c),
                          etag_hex(info->etag), PyBool_FromLong(created)};
    return tuple_of(items, 4);
}

/* index_put_plain(index_addr, key, value, release_gil) -> (mtime_ns, crc32c, etag hex,
 * created), or pm_index_put_plain's negative PM_E_* code. key: bytes without NUL; value:
 * bytes. The GIL is released when release_gil is set (barriers are msyncs) or the value
 * is over GIL_COPY_MAX. */
static PyObject *index_put_plain(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 4) {
        PyErr_SetString(PyExc_TypeError, "index_put_plain(index_addr, key, value, release_gil)");
        return NULL;
    }
    void *x;
    const char *key;
    char *value;
    Py_ssize_t vlen;
    if (index_args(args, &x, &key) < 0 || PyBytes_AsStringAndSize(args[2], &value, &vlen) < 0)
        return NULL;
    int release = PyObject_IsTrue(args[3]);
    if (release < 0) return NULL;
    if (!x) return PyLong_FromLong(PM_E_ARG);
    struct pm_obj_info *info = &tl_put_info;
    int rc;
    if (release || vlen > GIL_COPY_MAX) {
        Py_BEGIN_ALLOW_THREADS
        rc = c_index_put_plain(x, key, (const uint8_t *)value, (uint64_t)vlen, info);
        Py_END_ALLOW_THREADS
    } else {
        rc = c_index_put_plain(x, key, (const uint8_t *)value, (uint64_t)vlen, info);
    }
    return rc < 0 ? PyLong_FromLong(rc) : put_result(info, rc == 1);
}

/* make_info_of -- a make_info instance of (key, size, etag hex, content type or None,
 * mtime_ns, crc32c); key: a new reference (NULL: an error, passed on). make_info: a tuple
 * subclass without an instance dict (store.ObjectInfo, a NamedTuple: store.py checks its
 * __dictoffset__), built in place as tuple's own __new__ builds a subclass (no row tuple,
 * no call) and left untracked by the GC: it holds only str, int and None, so it can be in
 * no cycle, and 1,000 tracked objects per list page set off collections (with both, a
 * list of 100-byte objects ran 1.6x faster). */
static PyObject *make_info_of(PyObject *make_info, PyObject *key, uint64_t size, const uint8_t *etag,
                              const uint8_t *ctype, uint32_t cs, uint64_t mtime, uint32_t crc)
{
    PyObject *ct = cs ? PyUnicode_DecodeUTF8((const char *)ctype, cs, "replace") : Py_NewRef(Py_None);
    PyObject *items[6] = {key, PyLong_FromUnsignedLongLong(size), etag_hex(etag), ct,
                          PyLong_FromUnsignedLongLong(mtime), PyLong_FromUnsignedLong(crc)};
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= items[i] != NULL;
    allocfunc alloc = NULL;
    if (ok && PyType_Check(make_info) && PyType_IsSubtype((PyTypeObject *)make_info, &PyTuple_Type))
        alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)make_info, Py_tp_alloc);
    else if (ok)
        PyErr_SetString(PyExc_TypeError, "make_info must be a tuple subclass (store.ObjectInfo)");
    PyObject *info = alloc ? alloc((PyTypeObject *)make_info, 6) : NULL;
    for (int i = 0; i < 6; i++) {
        if (!info) Py_XDECREF(items[i]);
        else PyTuple_SetItem(info, i, items[i]);    /* steals; info is ours alone (refcount 1) */
    }
    if (info) PyObject_GC_UnTrack(info);
    return info;
}

static PyObject *info_of(PyObject *make_info, PyObject *key, const struct pm_obj_info *i)
{
    return make_info_of(make_info, Py_NewRef(key), i->value_size, i->etag, i->ctype, i->ctype_size, i->mtime_ns,
                        i->value_crc32c);
}

/* list_entry -- make_info(fields) from the pm_index_list entry at *p; advances *p. */
static PyObject *list_entry(PyObject *make_info, const uint8_t **p)
{
    const uint8_t *q = *p;
    uint16_t ks, cs;
    uint64_t size, mtime;
    uint32_t crc;
    memcpy(&ks, q, 2);
    const char *key = (const char *)q + 2;
    q += 2 + ks;
    memcpy(&cs, q, 2);
    const char *ctype = (const char *)q + 2;
    q += 2 + cs;
    memcpy(&size, q, 8); memcpy(&mtime, q + 8, 8); memcpy(&crc, q + 32, 4);
    *p = q + 36;
    return make_info_of(make_info, PyUnicode_DecodeUTF8(key, ks, "strict"), size, q + 16, (const uint8_t *)ctype, cs,
                        mtime, crc);
}

/* index_list(index_addr, after, prefix, limit, make_info) -> ([make_info(fields)] in key
 * order, whether more follow), or pm_index_list's negative PM_E_* code. after, prefix:
 * bytes; fields: (key, size, etag hex, content type or None, mtime_ns, crc32c). The walk
 * runs with the GIL released. */
static PyObject *index_list(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 5) {
        PyErr_SetString(PyExc_TypeError, "index_list(index_addr, after, prefix, limit, make_info)");
        return NULL;
    }
    void *x;
    char *after, *prefix;
    Py_ssize_t alen, plen;
    if (ptr_arg(args[0], &x) < 0 || PyBytes_AsStringAndSize(args[1], &after, &alen) < 0 ||
        PyBytes_AsStringAndSize(args[2], &prefix, &plen) < 0)
        return NULL;
    long limit = PyLong_AsLong(args[3]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (!x || limit < 1 || limit > 1000000) return PyLong_FromLong(PM_E_ARG);
    uint32_t want = (uint32_t)limit + 1, got = 0;      /* one more: does a next page exist? */
    uint64_t cap = (uint64_t)want * PM_LIST_ENTRY_MAX;
    uint8_t *buf = malloc(cap);     /* pages untouched past the entries found */
    if (!buf) return PyErr_NoMemory();
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = c_index_list(x, (const uint8_t *)after, (uint32_t)alen, (const uint8_t *)prefix, (uint32_t)plen, want, buf,
                      cap, &got);
    Py_END_ALLOW_THREADS
    PyObject *out = rc < 0 ? NULL : PyList_New(0);
    const uint8_t *p = buf;
    for (uint32_t i = 0; out && i < got && i < (uint32_t)limit; i++) {
        PyObject *info = list_entry(args[4], &p);
        if (!info || PyList_Append(out, info) < 0) Py_CLEAR(out);
        Py_XDECREF(info);
    }
    free(buf);
    if (rc < 0) return PyLong_FromLong(rc);
    if (!out) return NULL;
    PyObject *items[2] = {out, PyBool_FromLong(got > (uint32_t)limit)};
    return tuple_of(items, 2);
}

/* index_read_info(index_addr, key, small_req_addr, key_str, make_info) -> (the value as
 * bytes, make_info(fields)) (see index_list), or a negative PM_E_* code: Store.get. */
static PyObject *index_read_info(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 5) {
        PyErr_SetString(PyExc_TypeError, "index_read_info(index_addr, key, small_req_addr, key_str, make_info)");
        return NULL;
    }
    void *x;
    const char *key;
    const struct pm_read_req *sr;
    int bad = read_args(args, &x, &key, &sr);
    if (bad) return bad < 0 ? NULL : PyLong_FromLong(PM_E_ARG);
    PyObject *v = read_whole(x, key, sr);
    if (!v || !PyBytes_Check(v)) return v;      /* an error, or a code */
    PyObject *items[2] = {v, info_of(args[4], args[3], sr->info)};
    return tuple_of(items, 2);
}

static __thread struct pm_obj_info tl_head_info;

/* index_head(index_addr, key, verify, key_str, make_info) -> make_info(fields) (see
 * index_list), or a negative PM_E_* code: Store.head. It reads the record alone (a value
 * up to 256 bytes too, for its CRC), with the GIL held. */
static PyObject *index_head(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (n != 5) {
        PyErr_SetString(PyExc_TypeError, "index_head(index_addr, key, verify, key_str, make_info)");
        return NULL;
    }
    void *x;
    char *key;
    Py_ssize_t klen;
    if (ptr_arg(args[0], &x) < 0 || PyBytes_AsStringAndSize(args[1], &key, &klen) < 0) return NULL;
    long verify = PyLong_AsLong(args[2]);
    if (verify == -1 && PyErr_Occurred()) return NULL;
    if (!x) return PyLong_FromLong(PM_E_ARG);
    int rc = c_index_get(x, (const uint8_t *)key, (uint32_t)klen, UINT64_C(1) << 62, 0, NULL, 0, (int)verify,
                         &tl_head_info);
    return rc < 0 ? PyLong_FromLong(rc) : info_of(args[4], args[3], &tl_head_info);
}

/* index_where(index_addr, key, verify, key_str, make_info) -> (value offset, value size,
 * make_info(fields)), or a negative PM_E_* code: index_head with where the value lies,
 * for Store.get(zero_copy=True) (the caller makes the view). */
static PyObject *index_where(PyObject *self, PyObject *const *args, Py_ssize_t n)
{
    PyObject *info = index_head(self, args, n);
    if (!info || PyLong_Check(info)) return info;   /* an error, or a code */
    PyObject *items[3] = {PyLong_FromUnsignedLongLong(tl_head_info.value_off),
                          PyLong_FromUnsignedLongLong(tl_head_info.value_size), info};
    return tuple_of(items, 3);
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_O, "bind({name: address}) for every name in FUNCTIONS"},
    {"index_where", (PyCFunction)(void (*)(void))index_where, METH_FASTCALL,
     "index_head -> (value offset, value size, make_info(fields))"},
    {"index_read_info", (PyCFunction)(void (*)(void))index_read_info, METH_FASTCALL,
     "index_read, and the object's info built by make_info"},
    {"index_head", (PyCFunction)(void (*)(void))index_head, METH_FASTCALL,
     "pm_index_get of the metadata alone -> make_info(fields)"},
    {"index_list", (PyCFunction)(void (*)(void))index_list, METH_FASTCALL,
     "pm_index_list -> ([make_info(fields)], more), the walk without the GIL"},
    {"index_read", (PyCFunction)(void (*)(void))index_read, METH_FASTCALL,
     "pm_index_read -> the value as bytes, the GIL held for values up to GIL_COPY_MAX"},
    {"index_put_plain", (PyCFunction)(void (*)(void))index_put_plain, METH_FASTCALL,
     "pm_index_put_plain -> (mtime_ns, crc32c, etag hex, created), the GIL held for values up to "
     "GIL_COPY_MAX unless release_gil"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "allocator._fast", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fast(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *t = PyType_FromSpec(&hot_spec);
    if (!t) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObject(m, "Hot", t) < 0) {     /* steals t only on success */
        Py_DECREF(t);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "OP_ALLOC_INTO", OP_ALLOC_INTO) < 0
        || PyModule_AddIntConstant(m, "GIL_COPY_MAX", GIL_COPY_MAX) < 0
        || PyModule_AddIntConstant(m, "OP_FREE_FROM", OP_FREE_FROM) < 0
        || PyModule_AddIntConstant(m, "OP_ALLOC", OP_ALLOC) < 0
        || PyModule_AddIntConstant(m, "OP_FREE", OP_FREE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#define FAST_NAME(name) "pm_" #name,
    static const char *names[] = {FAST_FUNCTIONS(FAST_NAME)};
    PyObject *fns = PyTuple_New(sizeof names / sizeof *names);
    for (Py_ssize_t i = 0; fns && i < (Py_ssize_t)(sizeof names / sizeof *names); i++) {
        PyObject *n = PyUnicode_FromString(names[i]);
        if (!n) Py_CLEAR(fns);
        else PyTuple_SetItem(fns, i, n);    /* steals n */
    }
    if (!fns || PyModule_AddObject(m, "FUNCTIONS", fns) < 0) {     /* steals fns only on success */
        Py_XDECREF(fns);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
