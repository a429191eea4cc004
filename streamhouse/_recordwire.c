/* streamhouse._recordwire: render one stored RecordBatch v2 as ConsumeResponse records, in C.
 *
 * A gRPC consume answers `repeated Record records = 1` of streamhouse.v1.ConsumeResponse. The
 * reader renders those bytes straight from each stored batch, a batch per call and no Python
 * object per record. The Python side (streamhouse/record_wire.py, ``render_batch``) checks the
 * CRC and decompresses with a hard bound; this module reads the 61-byte header, walks the
 * uncompressed record bytes (the batch's own, or the decompressed blob) and writes the
 * protobuf bytes of the records in range. Its output is byte-for-byte that of the Python
 * reference (record_wire.py ``render_records`` over recordbatch.py ``decode_records``), which
 * the tests check on generated batches.
 *
 * Read (header: recordbatch.py's table; big-endian):
 *   byte 8   batch_length int32   must equal the buffer's length - 12
 *   byte 16  magic int8           must be 2
 *   byte 21  attributes int16     bits 0-2 codec (non-zero: the records are passed separately),
 *                                 bit 3 LogAppendTime (every record gets max_timestamp)
 *   byte 27  base_timestamp int64, byte 35 max_timestamp int64
 *   byte 57  records_count int32  >= 0; exactly that many records fill the record bytes
 * Records (zigzag LEB128 varints; "varint" at most 5 bytes, "varlong" at most 10 and within
 * int64): length varint (>= 6) | attributes int8 | timestamp_delta varlong | offset_delta
 * varint | key_length varint (-1 null) | key | value_length varint (-1 null) | value |
 * header_count varint (>= 0) | (key_len varint >= 0, UTF-8 key, value_len varint (-1 null),
 * value)*. Every field lies inside its record's length and the fields use all of it.
 *
 * Written (protobuf, proto3; varints unsigned LEB128, negative int64 as ten bytes), per
 * record with offset >= first_offset, at most `limit` records:
 *   0x0A len Record
 *   Record: 0x0A len key (not null) | 0x12 len value (not null) | 0x1A len Header (each)
 *           | 0x20 varint timestamp_ms (not 0) | 0x28 varint offset (not 0)
 *   Header: 0x0A len key | 0x12 len value (not null)
 * Every record of the batch is walked and checked, rendered or not, as decode_records does.
 *
 * render(batch, records, base_offset, first_offset, limit) -> (wire, count, after)
 *   batch    the whole stored batch, header included
 *   records  None (uncompressed batch: its own record bytes) or the decompressed records
 *   after    offset after the last record rendered (first_offset when none was)
 * Raises RenderError(code, message), a ValueError, where code is the name of the Kafka error
 * (CORRUPT_MESSAGE, INVALID_RECORD, UNSUPPORTED_FOR_MESSAGE_FORMAT); the message names the
 * record and what is wrong. Nothing is read outside the buffers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define HEADER_SIZE 61
#define MIN_RECORD_LENGTH 6 /* attributes, ts delta, offset delta, key len, value len, headers */

static PyObject *RenderError;

typedef struct {
    const char *code; /* NULL: no failure */
    char message[256];
} failure_t;

static int64_t be64(const uint8_t *p) {
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) v = (v << 8) | p[k];
    return (int64_t)v;
}

static int32_t be32(const uint8_t *p) {
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
                     (uint32_t)p[3]);
}

/* Zigzag LEB128 at *p, not reading at or past end. 0 ok, -1 runs past end, -2 longer than
 * max_bytes or (10 bytes) beyond 64 bits. */
static inline int read_zigzag(const uint8_t **p, const uint8_t *end, int max_bytes,
                              int64_t *out) {
    const uint8_t *q = *p;
    if (q < end && *q < 0x80) {
        *out = (int64_t)(*q >> 1) ^ -(int64_t)(*q & 1);
        *p = q + 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (q >= end) return -1;
        uint8_t b = *q++;
        if (i == 9 && b > 1) return -2;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            *p = q;
            return 0;
        }
    }
    return -2;
}

static inline Py_ssize_t varint_size(uint64_t v) {
    Py_ssize_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *put_varint(uint8_t *o, uint64_t v) {
    while (v >= 0x80) {
        *o++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *o++ = (uint8_t)v;
    return o;
}

static inline uint8_t *put_bytes(uint8_t *o, uint8_t tag, const uint8_t *s, int64_t n) {
    *o++ = tag;
    o = put_varint(o, (uint64_t)n);
    memcpy(o, s, (size_t)n);
    return o + n;
}

/* Header keys must be UTF-8 (decode_records makes str of them): ASCII quickly, the rest
 * by CPython's strict decoder. 1 valid, 0 not, -1 out of memory. */
static int utf8_ok(const uint8_t *s, int64_t n) {
    int64_t k = 0;
    while (k < n && s[k] < 0x80) k++;
    if (k == n) return 1;
    PyObject *text = PyUnicode_DecodeUTF8((const char *)s, (Py_ssize_t)n, "strict");
    if (text != NULL) {
        Py_DECREF(text);
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
    PyErr_Clear();
    return 0;
}

#define FAIL(code_, ...)                                             \
    do {                                                             \
        f->code = (code_);                                           \
        snprintf(f->message, sizeof f->message, __VA_ARGS__);        \
        goto failed;                                                 \
    } while (0)

#define FIELD(var, max_bytes, name)                                                        \
    do {                                                                                   \
        int rc_ = read_zigzag(&p, rec_end, (max_bytes), &(var));                           \
        if (rc_ == -1)                                                                     \
            FAIL("INVALID_RECORD", "record %zd: %s runs past the record's length of %lld " \
                 "bytes", i, (name), (long long)length);                                   \
        if (rc_ == -2)                                                                     \
            FAIL("INVALID_RECORD", "record %zd: %s is an overlong varint", i, (name));     \
    } while (0)

typedef struct {
    PyObject *out; /* bytes being filled; NULL until the first record is written */
    Py_ssize_t used;
    Py_ssize_t cap;
} sink_t;

/* Room for `need` more bytes; 0 ok, -1 out of memory (exception set). */
static int reserve(sink_t *s, Py_ssize_t need) {
    if (s->out != NULL && s->cap - s->used >= need) return 0;
    Py_ssize_t cap = s->cap;
    while (cap - s->used < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap = cap < 4096 ? 4096 : cap * 2;
    }
    if (s->out == NULL) {
        s->out = PyBytes_FromStringAndSize(NULL, cap);
        if (s->out == NULL) return -1;
    } else if (_PyBytes_Resize(&s->out, cap) < 0) {
        return -1; /* _PyBytes_Resize freed it and set s->out to NULL */
    }
    s->cap = cap;
    return 0;
}

/* Walks the `count` records in [data, end) and renders those in range into s. */
static int walk(const uint8_t *data, const uint8_t *end, Py_ssize_t count, int64_t base_offset,
                int64_t first_offset, int64_t limit, int64_t base_ts, int log_append,
                int64_t max_ts, sink_t *s, int64_t *rendered, int64_t *after, failure_t *f) {
    const uint8_t *p = data;
    int64_t n = 0;
    Py_ssize_t i = 0;
    for (i = 0; i < count; i++) {
        if (p >= end)
            FAIL("INVALID_RECORD", "record %zd: batch ends after %zd of %zd records", i, i,
                 count);
        int64_t length;
        {
            int rc = read_zigzag(&p, end, 5, &length);
            if (rc != 0)
                FAIL("INVALID_RECORD", "record %zd: its length is %s", i,
                     rc == -1 ? "cut off by the batch's end" : "an overlong varint");
        }
        if (length < MIN_RECORD_LENGTH || length > end - p)
            FAIL("INVALID_RECORD", "record %zd: length %lld is invalid for %lld remaining bytes",
                 i, (long long)length, (long long)(end - p));
        const uint8_t *rec_end = p + length;
        p++; /* attributes, unused */
        int64_t td, od, kl, vl, hc;
        FIELD(td, 10, "timestamp delta");
        FIELD(od, 5, "offset delta");
        FIELD(kl, 5, "key length");
        const uint8_t *key = p;
        if (kl < -1) FAIL("INVALID_RECORD", "record %zd: key length %lld", i, (long long)kl);
        if (kl > rec_end - p)
            FAIL("INVALID_RECORD", "record %zd: key of %lld bytes runs past the record", i,
                 (long long)kl);
        if (kl > 0) p += kl;
        FIELD(vl, 5, "value length");
        const uint8_t *value = p;
        if (vl < -1) FAIL("INVALID_RECORD", "record %zd: value length %lld", i, (long long)vl);
        if (vl > rec_end - p)
            FAIL("INVALID_RECORD", "record %zd: value of %lld bytes runs past the record", i,
                 (long long)vl);
        if (vl > 0) p += vl;
        FIELD(hc, 5, "header count");
        if (hc < 0 || hc > rec_end - p)
            FAIL("INVALID_RECORD", "record %zd: header count %lld", i, (long long)hc);
        /* headers: checked and sized here, written below from the same bytes */
        const uint8_t *headers = p;
        Py_ssize_t headers_size = 0;
        for (int64_t h = 0; h < hc; h++) {
            int64_t hkl, hvl;
            FIELD(hkl, 5, "header key length");
            if (hkl < 0 || hkl > rec_end - p)
                FAIL("INVALID_RECORD", "record %zd: header key length %lld", i, (long long)hkl);
            int ok = utf8_ok(p, hkl);
            if (ok < 0) return -1;
            if (!ok) FAIL("INVALID_RECORD", "record %zd: header key is not UTF-8", i);
            p += hkl;
            FIELD(hvl, 5, "header value length");
            if (hvl < -1 || hvl > rec_end - p)
                FAIL("INVALID_RECORD", "record %zd: header value length %lld", i, (long long)hvl);
            Py_ssize_t hsize = 1 + varint_size((uint64_t)hkl) + hkl;
            if (hvl >= 0) {
                hsize += 1 + varint_size((uint64_t)hvl) + hvl;
                p += hvl;
            }
            headers_size += 1 + varint_size((uint64_t)hsize) + hsize;
        }
        if (p != rec_end)
            FAIL("INVALID_RECORD", "record %zd: fields take %lld bytes but its length says %lld",
                 i, (long long)(length - (rec_end - p)), (long long)length);
        int64_t offset;
        if (__builtin_add_overflow(base_offset, od, &offset))
            FAIL("INVALID_RECORD", "record %zd: offset delta %lld overflows", i, (long long)od);
        int64_t ts = max_ts;
        if (!log_append && __builtin_add_overflow(base_ts, td, &ts))
            FAIL("INVALID_RECORD", "record %zd: timestamp delta %lld overflows", i,
                 (long long)td);
        if (offset < first_offset || n >= limit) continue; /* walked and checked only */
        Py_ssize_t body = headers_size;
        if (kl >= 0) body += 1 + varint_size((uint64_t)kl) + kl;
        if (vl >= 0) body += 1 + varint_size((uint64_t)vl) + vl;
        if (ts != 0) body += 1 + varint_size((uint64_t)ts);
        if (offset != 0) body += 1 + varint_size((uint64_t)offset);
        if (reserve(s, 1 + varint_size((uint64_t)body) + body) < 0) return -1;
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(s->out) + s->used;
        *o++ = 0x0A;
        o = put_varint(o, (uint64_t)body);
        if (kl >= 0) o = put_bytes(o, 0x0A, key, kl);
        if (vl >= 0) o = put_bytes(o, 0x12, value, vl);
        const uint8_t *q = headers;
        for (int64_t h = 0; h < hc; h++) { /* checked above: the reads cannot fail */
            int64_t hkl = 0, hvl = -1;
            read_zigzag(&q, rec_end, 5, &hkl);
            const uint8_t *hkey = q;
            q += hkl;
            read_zigzag(&q, rec_end, 5, &hvl);
            Py_ssize_t hsize = 1 + varint_size((uint64_t)hkl) + hkl;
            if (hvl >= 0) hsize += 1 + varint_size((uint64_t)hvl) + hvl;
            *o++ = 0x1A;
            o = put_varint(o, (uint64_t)hsize);
            o = put_bytes(o, 0x0A, hkey, hkl);
            if (hvl >= 0) {
                o = put_bytes(o, 0x12, q, hvl);
                q += hvl;
            }
        }
        if (ts != 0) {
            *o++ = 0x20;
            o = put_varint(o, (uint64_t)ts);
        }
        if (offset != 0) {
            *o++ = 0x28;
            o = put_varint(o, (uint64_t)offset);
        }
        s->used = o - (uint8_t *)PyBytes_AS_STRING(s->out);
        n++;
        *after = offset + 1;
    }
    if (p != end)
        FAIL("INVALID_RECORD", "%lld bytes left after the %zd records of the batch",
             (long long)(end - p), count);
    *rendered = n;
    return 0;
failed:
    return 1;
}

static PyObject *fail(const char *code, const char *message) {
    PyObject *value = Py_BuildValue("(ss)", code, message);
    if (value != NULL) {
        PyErr_SetObject(RenderError, value);
        Py_DECREF(value);
    }
    return NULL;
}

static PyObject *render(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer batch, recs;
    PyObject *records;
    long long base_offset, first_offset, limit;
    if (!PyArg_ParseTuple(args, "y*OLLL:render", &batch, &records, &base_offset, &first_offset,
                          &limit))
        return NULL;
    int have_recs = 0;
    PyObject *result = NULL;
    sink_t s = {NULL, 0, 0};
    failure_t f = {NULL, {0}};
    const uint8_t *b = (const uint8_t *)batch.buf;
    char message[256];
    if (batch.len < HEADER_SIZE) {
        snprintf(message, sizeof message, "batch of %zd bytes is shorter than the %d-byte header",
                 batch.len, HEADER_SIZE);
        fail("CORRUPT_MESSAGE", message);
        goto done;
    }
    if (b[16] != 2) {
        snprintf(message, sizeof message, "magic %d, only record batch v2 (magic 2) is supported",
                 (int)(int8_t)b[16]);
        fail("UNSUPPORTED_FOR_MESSAGE_FORMAT", message);
        goto done;
    }
    int64_t batch_length = be32(b + 8);
    if (batch_length + 12 != batch.len) {
        snprintf(message, sizeof message, "batchLength %lld says %lld bytes, got %zd",
                 (long long)batch_length, (long long)batch_length + 12, batch.len);
        fail("CORRUPT_MESSAGE", message);
        goto done;
    }
    int attributes = (b[21] << 8) | b[22];
    int64_t base_ts = be64(b + 27), max_ts = be64(b + 35);
    int32_t count = be32(b + 57);
    if (count < 0) {
        snprintf(message, sizeof message, "negative recordsCount %d", (int)count);
        fail("INVALID_RECORD", message);
        goto done;
    }
    const uint8_t *data = b + HEADER_SIZE, *end = b + batch.len;
    if (records != Py_None) {
        if (PyObject_GetBuffer(records, &recs, PyBUF_SIMPLE) < 0) goto done;
        have_recs = 1;
        data = (const uint8_t *)recs.buf;
        end = data + recs.len;
    } else if (attributes & 0x07) {
        PyErr_SetString(PyExc_ValueError,
                        "render: a compressed batch needs its decompressed records");
        goto done;
    }
    if (limit < 0) limit = 0;
    /* First guess of the output: the record bytes and 24 more per record (a 100-byte value
     * record grows by about 16); it grows by doubling when a batch needs more. */
    /* A record takes at least 7 bytes, so a batch claiming more records than its bytes can
     * hold (a corrupt count) must not size the first allocation. */
    Py_ssize_t guess = count;
    if (guess > (Py_ssize_t)(end - data) / 7) guess = (Py_ssize_t)(end - data) / 7;
    s.cap = (Py_ssize_t)(end - data) + guess * 24 + 64;
    int64_t rendered = 0, after = first_offset;
    int rc = walk(data, end, (Py_ssize_t)count, base_offset, first_offset, limit, base_ts,
                  (attributes & 0x08) != 0, max_ts, &s, &rendered, &after, &f);
    if (rc < 0) goto done;
    if (rc > 0) {
        fail(f.code, f.message);
        goto done;
    }
    if (s.out == NULL) {
        s.out = PyBytes_FromStringAndSize(NULL, 0);
        if (s.out == NULL) goto done;
    } else if (_PyBytes_Resize(&s.out, s.used) < 0) {
        goto done;
    }
    result = Py_BuildValue("OLL", s.out, (long long)rendered, (long long)after);
done:
    Py_XDECREF(s.out);
    if (have_recs) PyBuffer_Release(&recs);
    PyBuffer_Release(&batch);
    return result;
}

static PyMethodDef methods[] = {
    {"render", render, METH_VARARGS,
     "render(batch, records, base_offset, first_offset, limit) -> (wire, count, after);\n"
     "see the module source's header."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "streamhouse._recordwire",
    .m_doc = "ConsumeResponse records rendered from a RecordBatch v2 "
             "(see streamhouse/_recordwire.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__recordwire(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    RenderError = PyErr_NewException("streamhouse._recordwire.RenderError", PyExc_ValueError,
                                     NULL);
    if (RenderError == NULL || PyModule_AddObjectRef(m, "RenderError", RenderError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
