/* streamhouse._keycompact: the per-record work of key compaction, in C.
 *
 * Key compaction (cleanup.policy=compact, lifecycle/keycompact.py) keeps the latest record of
 * each key. Two passes over a partition's uncompressed record bytes (the record table of
 * streamhouse/recordbatch.py's docstring), a batch at a time, never a Python object per
 * record:
 *
 * 1. OffsetMap.put_records: every keyed record of the dirty range puts (hash of its key ->
 *    its offset) into a fixed-size open-addressing table (Kafka's SkimpyOffsetMap): a later
 *    offset of the same key overwrites the earlier one. The table never grows: when it is
 *    full (3/4 of its slots used) a record with a new key is not put and the call returns the
 *    index of that record, so the caller cleans up to the last offset put and continues on a
 *    later pass.
 * 2. filter_records: rebuilds one batch's record bytes keeping a record unless
 *      - its offset is at most the map's latest offset (records past it are newer than
 *        anything the map knows) and it has no key, or the map holds a later offset for its
 *        key, or
 *      - it is a tombstone (null value), ``drop_tombstones`` (the batch's delete horizon,
 *        KIP-534, has passed) and its offset is at most the map's latest offset (past it, the
 *        map does not know the older records of its key that the tombstone still hides).
 *    Kept records are copied byte for byte, except that when a kept tombstone makes the batch
 *    carry a delete horizon for the first time, every kept record's timestamp delta is
 *    rewritten relative to the new base timestamp (``rebase_to``: the horizon, as Kafka
 *    stores it), so each record's timestamp stays the same.
 *
 * Key hash: 128 bits (two 64-bit multiply-xorshift hashes with different seeds), so two keys
 * collide with a probability of about n^2 / 2^129: a collision would drop a live record, and
 * Kafka accepts MD5's 128 bits for the same map.
 *
 * OffsetMap(memory_bytes) -> map of memory_bytes / 24 slots (rounded down to a power of two,
 *   at least 16); .size, .capacity (entries it takes before it is full), .latest_offset (-1
 *   before any put), .put_records(records, count, base_offset, from_offset, until_offset) -> index
 *   of the first record not put (count when all were; records outside [from_offset,
 *   until_offset) are passed over), .get(key) -> offset or -1, .clear().
 * filter_records(records, count, base_offset, offset_map, drop_tombstones, base_timestamp,
 *   rebase_to) -> (record_bytes, kept, removed_tombstones, kept_tombstones, max_timestamp,
 *   rebased)
 *   max_timestamp: largest timestamp of the kept records (-1 when none kept); rebased: True
 *   when the deltas were rewritten relative to rebase_to (only when a tombstone was kept and
 *   rebase_to != base_timestamp).
 * Malformed record bytes (they were validated when produced) raise ValueError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* varints */

static int read_varint(const uint8_t **p, const uint8_t *end, int max_bytes, int64_t *out) {
    uint64_t v = 0;
    const uint8_t *q = *p;
    for (int i = 0; i < max_bytes; i++) {
        if (q >= end) return -1;
        uint8_t b = *q++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            *p = q;
            return 0;
        }
    }
    return -1;
}

static size_t write_varint(uint8_t *out, int64_t n) {
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    size_t i = 0;
    while (z > 0x7f) {
        out[i++] = (uint8_t)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    out[i++] = (uint8_t)z;
    return i;
}

static size_t varint_size(int64_t n) {
    uint8_t tmp[10];
    return write_varint(tmp, n);
}

/* One record's framing: where it starts and ends, its fields' positions. */
typedef struct {
    const uint8_t *start;    /* the length varint */
    const uint8_t *body;     /* after the length varint (attributes) */
    const uint8_t *after_ts; /* the offset delta varint */
    const uint8_t *end;      /* after the record */
    int64_t ts_delta, offset_delta;
    const uint8_t *key; /* NULL: null key */
    int64_t key_len;
    int null_value;
} record_t;

/* Parses the record at *p; 0 ok, -1 malformed (message in err). */
static int parse_record(const uint8_t **p, const uint8_t *end, record_t *r, Py_ssize_t i,
                        char *err, size_t errsize) {
    int64_t length, vlen;
    r->start = *p;
    const uint8_t *q = *p;
    if (read_varint(&q, end, 5, &length) || length < 6 || length > end - q) {
        snprintf(err, errsize, "record %zd: bad length", i);
        return -1;
    }
    r->body = q;
    r->end = q + length;
    q++; /* attributes */
    if (read_varint(&q, r->end, 10, &r->ts_delta)) goto bad;
    r->after_ts = q;
    if (read_varint(&q, r->end, 5, &r->offset_delta)) goto bad;
    if (read_varint(&q, r->end, 5, &r->key_len) || r->key_len < -1 || r->key_len > r->end - q)
        goto bad;
    r->key = r->key_len < 0 ? NULL : q;
    if (r->key_len > 0) q += r->key_len;
    if (read_varint(&q, r->end, 5, &vlen) || vlen < -1 || vlen > r->end - q) goto bad;
    r->null_value = vlen < 0;
    *p = r->end;
    return 0;
bad:
    snprintf(err, errsize, "record %zd: malformed fields", i);
    return -1;
}

/* ---------------------------------------------------------------------------------------- */
/* key hash: 128 bits from two seeded 64-bit hashes */

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t hash64(const uint8_t *s, int64_t n, uint64_t seed) {
    uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ULL);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t k;
        memcpy(&k, s + i, 8);
        h = mix64(h ^ mix64(k + seed)) * 0x9e3779b97f4a7c15ULL;
    }
    uint64_t tail = 0;
    for (int64_t j = 0; i + j < n; j++) tail |= (uint64_t)s[i + j] << (8 * j);
    h = mix64(h ^ mix64(tail ^ (uint64_t)(n - i) ^ seed));
    return h;
}

/* ---------------------------------------------------------------------------------------- */
/* OffsetMap */

typedef struct {
    uint64_t h1, h2;
    int64_t offset; /* -1: empty slot */
} slot_t;

typedef struct {
    PyObject_HEAD slot_t *slots;
    Py_ssize_t nslots; /* power of two */
    Py_ssize_t size;
    Py_ssize_t capacity;
    int64_t latest;
} OffsetMap;

static void map_clear(OffsetMap *m) {
    for (Py_ssize_t i = 0; i < m->nslots; i++) m->slots[i].offset = -1;
    m->size = 0;
    m->latest = -1;
}

static int OffsetMap_init(OffsetMap *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"memory_bytes", NULL};
    long long memory;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L", kwlist, &memory)) return -1;
    Py_ssize_t n = 16;
    while ((long long)(n * 2) * (long long)sizeof(slot_t) <= memory && n < ((Py_ssize_t)1 << 40))
        n *= 2;
    PyMem_Free(self->slots);
    self->slots = PyMem_Malloc((size_t)n * sizeof(slot_t));
    if (!self->slots) {
        PyErr_NoMemory();
        return -1;
    }
    self->nslots = n;
    self->capacity = n / 4 * 3;
    map_clear(self);
    return 0;
}

static void OffsetMap_dealloc(OffsetMap *self) {
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The slot of the key hash: its own or the empty one where it would go. */
static slot_t *map_find(OffsetMap *m, uint64_t h1, uint64_t h2) {
    Py_ssize_t mask = m->nslots - 1;
    Py_ssize_t i = (Py_ssize_t)(h1 & (uint64_t)mask);
    for (;;) {
        slot_t *s = &m->slots[i];
        if (s->offset < 0 || (s->h1 == h1 && s->h2 == h2)) return s;
        i = (i + 1) & mask;
    }
}

#define SEED1 0x243f6a8885a308d3ULL
#define SEED2 0x13198a2e03707344ULL

static PyObject *OffsetMap_put_records(OffsetMap *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t count;
    long long base_offset, from_offset = INT64_MIN, until_offset = INT64_MAX;
    if (!PyArg_ParseTuple(args, "y*nL|LL", &buf, &count, &base_offset, &from_offset,
                          &until_offset))
        return NULL;
    const uint8_t *p = buf.buf, *end = p + buf.len;
    char err[128];
    Py_ssize_t i = 0;
    for (; i < count; i++) {
        record_t r;
        const uint8_t *q = p;
        if (parse_record(&q, end, &r, i, err, sizeof err)) {
            PyBuffer_Release(&buf);
            PyErr_SetString(PyExc_ValueError, err);
            return NULL;
        }
        int64_t offset = base_offset + r.offset_delta;
        if (r.key && offset >= from_offset && offset < until_offset) {
            uint64_t h1 = hash64(r.key, r.key_len, SEED1), h2 = hash64(r.key, r.key_len, SEED2);
            slot_t *s = map_find(self, h1, h2);
            if (s->offset < 0) {
                if (self->size >= self->capacity) break; /* full: this record is not put */
                s->h1 = h1;
                s->h2 = h2;
                self->size++;
            }
            s->offset = offset;
            self->latest = s->offset;
        }
        p = q;
    }
    PyBuffer_Release(&buf);
    return PyLong_FromSsize_t(i);
}

static PyObject *OffsetMap_get(OffsetMap *self, PyObject *arg) {
    Py_buffer key;
    if (PyObject_GetBuffer(arg, &key, PyBUF_SIMPLE)) return NULL;
    uint64_t h1 = hash64(key.buf, key.len, SEED1), h2 = hash64(key.buf, key.len, SEED2);
    PyBuffer_Release(&key);
    return PyLong_FromLongLong(map_find(self, h1, h2)->offset);
}

static PyObject *OffsetMap_clear(OffsetMap *self, PyObject *Py_UNUSED(ignored)) {
    map_clear(self);
    Py_RETURN_NONE;
}

static PyObject *OffsetMap_get_size(OffsetMap *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(self->size);
}
static PyObject *OffsetMap_get_capacity(OffsetMap *self, void *c) {
    (void)c;
    return PyLong_FromSsize_t(self->capacity);
}
static PyObject *OffsetMap_get_latest(OffsetMap *self, void *c) {
    (void)c;
    return PyLong_FromLongLong(self->latest);
}

static PyMethodDef OffsetMap_methods[] = {
    {"put_records", (PyCFunction)OffsetMap_put_records, METH_VARARGS,
     "put_records(records, count, base_offset, from_offset=-2**63, until_offset=2**63-1) -> "
     "index of the first record not put"},
    {"get", (PyCFunction)OffsetMap_get, METH_O, "get(key) -> latest offset put, or -1"},
    {"clear", (PyCFunction)OffsetMap_clear, METH_NOARGS, "forget every key"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef OffsetMap_getset[] = {
    {"size", (getter)OffsetMap_get_size, NULL, "keys held", NULL},
    {"capacity", (getter)OffsetMap_get_capacity, NULL, "keys it holds before it is full", NULL},
    {"latest_offset", (getter)OffsetMap_get_latest, NULL, "last offset put, -1 if none", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject OffsetMapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "streamhouse._keycompact.OffsetMap",
    .tp_basicsize = sizeof(OffsetMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Key hash -> latest offset, fixed size (see streamhouse/_keycompact.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)OffsetMap_init,
    .tp_dealloc = (destructor)OffsetMap_dealloc,
    .tp_methods = OffsetMap_methods,
    .tp_getset = OffsetMap_getset,
};

/* ---------------------------------------------------------------------------------------- */
/* filter_records */

static PyObject *filter_records(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    Py_ssize_t count;
    long long base_offset, base_ts, rebase_to;
    PyObject *map_obj;
    int drop_tombstones;
    if (!PyArg_ParseTuple(args, "y*nLO!pLL", &buf, &count, &base_offset, &OffsetMapType, &map_obj,
                          &drop_tombstones, &base_ts, &rebase_to))
        return NULL;
    OffsetMap *m = (OffsetMap *)map_obj;
    const uint8_t *p = buf.buf, *end = p + buf.len;
    char err[128];
    uint8_t *keep = NULL;
    PyObject *out = NULL;
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "negative record count");
        goto done;
    }
    keep = PyMem_Malloc((size_t)count + 1);
    if (!keep) {
        PyErr_NoMemory();
        goto done;
    }
    /* pass 1: which records stay */
    Py_ssize_t kept = 0, removed_tombstones = 0, kept_tombstones = 0;
    int64_t max_ts = -1;
    size_t out_size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        record_t r;
        if (parse_record(&p, end, &r, i, err, sizeof err)) {
            PyErr_SetString(PyExc_ValueError, err);
            goto done;
        }
        int64_t offset = base_offset + r.offset_delta;
        int k = 1;
        if (offset <= m->latest) {
            if (!r.key) {
                k = 0;
            } else {
                uint64_t h1 = hash64(r.key, r.key_len, SEED1), h2 = hash64(r.key, r.key_len, SEED2);
                if (map_find(m, h1, h2)->offset > offset) k = 0;
            }
        }
        if (k && r.null_value) {
            /* A tombstone goes only inside the range the map covers: past m->latest the map
               does not know the key's older records, which the tombstone still hides. */
            if (drop_tombstones && offset <= m->latest) {
                k = 0;
                removed_tombstones++;
            } else {
                kept_tombstones++;
            }
        }
        keep[i] = (uint8_t)k;
        if (k) {
            kept++;
            int64_t ts = base_ts + r.ts_delta;
            if (ts > max_ts) max_ts = ts;
            out_size += (size_t)(r.end - r.start);
        }
    }
    if (p != end) {
        PyErr_Format(PyExc_ValueError, "%zd bytes follow the %zd records",
                     (Py_ssize_t)(end - p), count);
        goto done;
    }
    int rebase = kept_tombstones > 0 && rebase_to != base_ts;
    if (rebase) out_size += (size_t)kept * 20; /* length and delta varints may grow */
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)out_size);
    if (!out) goto done;
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
    /* pass 2: copy the kept records */
    p = buf.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        record_t r;
        parse_record(&p, end, &r, i, err, sizeof err); /* parsed fine in pass 1 */
        if (!keep[i]) continue;
        if (!rebase) {
            memcpy(w, r.start, (size_t)(r.end - r.start));
            w += r.end - r.start;
            continue;
        }
        int64_t delta = base_ts + r.ts_delta - rebase_to;
        size_t old_ts_size = (size_t)(r.after_ts - r.body - 1);
        size_t rest = (size_t)(r.end - r.after_ts);
        int64_t length = 1 + (int64_t)varint_size(delta) + (int64_t)rest;
        (void)old_ts_size;
        w += write_varint(w, length);
        *w++ = r.body[0]; /* attributes */
        w += write_varint(w, delta);
        memcpy(w, r.after_ts, rest);
        w += rest;
    }
    if (_PyBytes_Resize(&out, (Py_ssize_t)(w - (uint8_t *)PyBytes_AS_STRING(out)))) {
        out = NULL;
        goto done;
    }
    PyObject *result = Py_BuildValue("(NnnnLO)", out, kept, removed_tombstones, kept_tombstones,
                                     (long long)max_ts, rebase ? Py_True : Py_False);
    out = NULL;
    PyMem_Free(keep);
    PyBuffer_Release(&buf);
    return result;
done:
    Py_XDECREF(out);
    PyMem_Free(keep);
    PyBuffer_Release(&buf);
    return NULL;
}

static PyMethodDef methods[] = {
    {"filter_records", filter_records, METH_VARARGS,
     "filter_records(records, count, base_offset, offset_map, drop_tombstones, base_timestamp, "
     "rebase_to) -> (record_bytes, kept, removed_tombstones, kept_tombstones, max_timestamp, "
     "rebased)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "streamhouse._keycompact",
    .m_doc = "Key compaction's per-record work (see streamhouse/_keycompact.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__keycompact(void) {
    if (PyType_Ready(&OffsetMapType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&OffsetMapType);
    if (PyModule_AddObject(m, "OffsetMap", (PyObject *)&OffsetMapType) < 0) {
        Py_DECREF(&OffsetMapType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
