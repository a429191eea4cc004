/* sql._arrowdecode: Kafka RecordBatch v2 records -> Arrow column buffers, in C.
 *
 * The SQL scan (sql/decode.py) turns stored batches into one Arrow RecordBatch per block
 * without a Python object per record: Python walks the 61-byte batch headers (the gap rule,
 * streamhouse/recordbatch.py ``walk_block``) and decompresses compressed batches; this module
 * walks the records of all of them and writes the Arrow buffers, which Python wraps with
 * ``pyarrow.Array.from_buffers`` (zero copy from the returned bytes).
 *
 * Records walked (recordbatch.py's record table; zigzag LEB128 varints, "varint" at most
 * 5 bytes, "varlong" at most 10):
 *
 *   length varint | attributes int8 | timestamp_delta varlong | offset_delta varint |
 *   key_length varint (-1 null) | key | value_length varint (-1 null) | value |
 *   header_count varint | per header: key_len varint, key (UTF-8), val_len varint (-1 null),
 *   value
 *
 * decode_batches(parts) -> tuple
 *   parts: a list of (records: buffer, start: int, end: int, count: int, first_offset: int,
 *          base_timestamp: int, log_append_time: int (0/1), max_timestamp: int)
 *          one per batch, ``records[start:end]`` holding exactly ``count`` records.
 *   A record's offset is first_offset + offset_delta; its timestamp base_timestamp +
 *   timestamp_delta, or max_timestamp for a LogAppendTime batch.
 *   Returns (rows, offset, timestamp,
 *            key_validity, key_offsets, key_data, key_nulls,
 *            value_validity, value_offsets, value_data, value_nulls,
 *            header_offsets, hkey_offsets, hkey_data,
 *            hvalue_validity, hvalue_offsets, hvalue_data, hvalue_nulls, headers)
 *   all buffers as bytes: int64 little-endian values, int32 Arrow offsets (rows + 1 of
 *   them), validity bitmaps LSB first (bit set = not null); the header columns are a
 *   list<struct<key: utf8, value: binary>> (header_offsets per row, the others per header).
 *   ValueError names the batch and record that does not parse (a truncated or overlong
 *   field, a record overrunning its length, fewer records than ``count``, trailing bytes).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    if (n) memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static int buf_i32(Buf *b, int32_t v) { return buf_put(b, &v, 4); }
static int buf_i64(Buf *b, int64_t v) { return buf_put(b, &v, 8); }

/* Validity bitmap: bit i of the row count so far. */
typedef struct {
    Buf bits;
    size_t n;
    size_t nulls;
} Bitmap;

static int bitmap_push(Bitmap *m, int valid) {
    if ((m->n & 7) == 0) {
        if (buf_reserve(&m->bits, 1) < 0) return -1;
        m->bits.data[m->bits.len++] = 0;
    }
    if (valid)
        m->bits.data[m->bits.len - 1] |= (char)(1 << (m->n & 7));
    else
        m->nulls++;
    m->n++;
    return 0;
}

/* Zigzag varint of at most max_bytes at *pos (< end); -1 on a truncated or overlong one. */
static int read_varint(const uint8_t *p, Py_ssize_t end, Py_ssize_t *pos, int max_bytes,
                       int64_t *out) {
    uint64_t result = 0;
    int shift = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (*pos >= end) return -1;
        uint8_t b = p[(*pos)++];
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = (int64_t)(result >> 1) ^ -(int64_t)(result & 1);
            return 0;
        }
        shift += 7;
    }
    return -1;
}

typedef struct {
    Buf offset, timestamp;
    Bitmap key_valid, value_valid, hvalue_valid;
    Buf key_off, key_data, value_off, value_data;
    Buf header_off, hkey_off, hkey_data, hvalue_off, hvalue_data;
    Py_ssize_t rows, headers;
} Out;

static void out_free(Out *o) {
    Buf *bufs[] = {&o->offset,      &o->timestamp,        &o->key_valid.bits, &o->value_valid.bits,
                   &o->hvalue_valid.bits, &o->key_off,    &o->key_data,       &o->value_off,
                   &o->value_data,  &o->header_off,       &o->hkey_off,       &o->hkey_data,
                   &o->hvalue_off,  &o->hvalue_data};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]->data);
}

#define FAIL(...)                                                                 \
    do {                                                                          \
        PyErr_Format(PyExc_ValueError, __VA_ARGS__);                              \
        return -1;                                                                \
    } while (0)

/* A nullable length-prefixed field (length already read) appended to data/offsets. */
static int put_bytes(const uint8_t *p, Py_ssize_t *pos, Py_ssize_t rec_end, int64_t len,
                     Buf *data, Buf *offs, Bitmap *valid, Py_ssize_t batch, Py_ssize_t rec,
                     const char *what) {
    if (len < -1) FAIL("batch %zd record %zd: %s length %lld", batch, rec, what, (long long)len);
    if (len >= 0) {
        if (len > rec_end - *pos)
            FAIL("batch %zd record %zd: %s of %lld bytes runs past the record", batch, rec, what,
                 (long long)len);
        if (buf_put(data, p + *pos, (size_t)len) < 0) return -1;
        *pos += len;
    }
    if (data->len > INT32_MAX) FAIL("more than 2 GiB of %s bytes in one block", what);
    if (valid && bitmap_push(valid, len >= 0) < 0) return -1;
    return buf_i32(offs, (int32_t)data->len);
}

static int decode_part(Out *o, const uint8_t *p, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t count,
                       int64_t first_offset, int64_t base_ts, int log_append, int64_t max_ts,
                       Py_ssize_t batch) {
    int64_t v;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (pos >= end) FAIL("batch %zd: ends after %zd of %zd records", batch, i, count);
        if (read_varint(p, end, &pos, 5, &v) < 0)
            FAIL("batch %zd record %zd: bad length varint", batch, i);
        if (v < 6 || v > end - pos)
            FAIL("batch %zd record %zd: length %lld is invalid for %zd remaining bytes", batch, i,
                 (long long)v, end - pos);
        Py_ssize_t rec_end = pos + v;
        pos += 1; /* attributes */
        int64_t td, od, kl, vl, hc;
        if (read_varint(p, rec_end, &pos, 10, &td) < 0 ||
            read_varint(p, rec_end, &pos, 5, &od) < 0 || read_varint(p, rec_end, &pos, 5, &kl) < 0)
            FAIL("batch %zd record %zd: truncated record header", batch, i);
        if (buf_i64(&o->offset, first_offset + od) < 0) return -1;
        if (buf_i64(&o->timestamp, log_append ? max_ts : base_ts + td) < 0) return -1;
        if (put_bytes(p, &pos, rec_end, kl, &o->key_data, &o->key_off, &o->key_valid, batch, i,
                      "key") < 0)
            return -1;
        if (read_varint(p, rec_end, &pos, 5, &vl) < 0)
            FAIL("batch %zd record %zd: truncated value length", batch, i);
        if (put_bytes(p, &pos, rec_end, vl, &o->value_data, &o->value_off, &o->value_valid, batch,
                      i, "value") < 0)
            return -1;
        if (read_varint(p, rec_end, &pos, 5, &hc) < 0 || hc < 0)
            FAIL("batch %zd record %zd: bad header count", batch, i);
        for (int64_t h = 0; h < hc; h++) {
            int64_t hkl, hvl;
            if (read_varint(p, rec_end, &pos, 5, &hkl) < 0 || hkl < 0)
                FAIL("batch %zd record %zd: bad length of header %lld's key", batch, i,
                     (long long)h);
            if (put_bytes(p, &pos, rec_end, hkl, &o->hkey_data, &o->hkey_off, NULL, batch, i,
                          "header key") < 0)
                return -1;
            if (read_varint(p, rec_end, &pos, 5, &hvl) < 0)
                FAIL("batch %zd record %zd: truncated header value length", batch, i);
            if (put_bytes(p, &pos, rec_end, hvl, &o->hvalue_data, &o->hvalue_off,
                          &o->hvalue_valid, batch, i, "header value") < 0)
                return -1;
            o->headers++;
        }
        if (o->headers > INT32_MAX) FAIL("more than 2^31 headers in one block");
        if (buf_i32(&o->header_off, (int32_t)o->headers) < 0) return -1;
        if (pos != rec_end)
            FAIL("batch %zd record %zd: %zd bytes left over inside the record", batch, i,
                 rec_end - pos);
        o->rows++;
    }
    if (pos != end) FAIL("batch %zd: %zd bytes after its %zd records", batch, end - pos, count);
    return 0;
}

static PyObject *as_bytes(Buf *b) { return PyBytes_FromStringAndSize(b->data ? b->data : "", b->len); }

static PyObject *validity(Bitmap *m) {
    if (m->nulls == 0) Py_RETURN_NONE;
    return as_bytes(&m->bits);
}

static PyObject *decode_batches(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *parts;
    if (!PyArg_ParseTuple(args, "O!:decode_batches", &PyList_Type, &parts)) return NULL;
    Out o;
    memset(&o, 0, sizeof(o));
    PyObject *result = NULL;
    if (buf_i32(&o.key_off, 0) < 0 || buf_i32(&o.value_off, 0) < 0 ||
        buf_i32(&o.header_off, 0) < 0 || buf_i32(&o.hkey_off, 0) < 0 ||
        buf_i32(&o.hvalue_off, 0) < 0)
        goto done;
    Py_ssize_t n = PyList_GET_SIZE(parts);
    for (Py_ssize_t b = 0; b < n; b++) {
        PyObject *records;
        Py_ssize_t start, end, count;
        long long first_offset, base_ts, max_ts;
        int log_append;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(parts, b), "OnnnLLpL:decode_batches part", &records,
                              &start, &end, &count, &first_offset, &base_ts, &log_append, &max_ts))
            goto done;
        Py_buffer view;
        if (PyObject_GetBuffer(records, &view, PyBUF_SIMPLE) < 0) goto done;
        int rc;
        if (start < 0 || end > view.len || start > end || count < 0) {
            PyErr_Format(PyExc_ValueError, "batch %zd: range %zd..%zd outside its %zd bytes", b,
                         start, end, view.len);
            rc = -1;
        } else {
            rc = decode_part(&o, (const uint8_t *)view.buf, start, end, count, first_offset,
                             base_ts, log_append, max_ts, b);
        }
        PyBuffer_Release(&view);
        if (rc < 0) goto done;
    }
    result = Py_BuildValue(
        "(nNNNNNnNNNnNNNNNNnn)", o.rows, as_bytes(&o.offset), as_bytes(&o.timestamp),
        validity(&o.key_valid), as_bytes(&o.key_off), as_bytes(&o.key_data),
        (Py_ssize_t)o.key_valid.nulls, validity(&o.value_valid), as_bytes(&o.value_off),
        as_bytes(&o.value_data), (Py_ssize_t)o.value_valid.nulls, as_bytes(&o.header_off),
        as_bytes(&o.hkey_off), as_bytes(&o.hkey_data), validity(&o.hvalue_valid),
        as_bytes(&o.hvalue_off), as_bytes(&o.hvalue_data), (Py_ssize_t)o.hvalue_valid.nulls,
        o.headers);
done:
    out_free(&o);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_batches", decode_batches, METH_VARARGS,
     "decode_batches(parts) -> Arrow buffers of the records of the given batches"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sql._arrowdecode", "Kafka records -> Arrow buffers", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__arrowdecode(void) { return PyModule_Create(&module); }
