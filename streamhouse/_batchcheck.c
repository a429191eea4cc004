/* streamhouse._batchcheck: walk the records of one Kafka RecordBatch v2, in C.
 *
 * The ingest edge validates every produced batch the way Kafka's LogValidator does, a batch
 * at a time and without one Python object per record. The Python side
 * (streamhouse/recordbatch.py, ``validate_batches``) checks the 61-byte header, the CRC and
 * decompresses with a hard bound; this module walks the uncompressed record bytes that
 * follow the header (or the decompressed blob) and checks every record.
 *
 * Byte layout walked (the record table of recordbatch.py's docstring; every integer is a
 * zigzag LEB128 varint, "varint" at most 5 bytes and within int32, "varlong" at most 10):
 *
 *   length            varint   bytes of the record after this field, >= 6
 *   attributes        int8     unused
 *   timestamp_delta   varlong  record timestamp - base_timestamp
 *   offset_delta      varint   record offset - base_offset; must be the record's index
 *   key_length        varint   -1 (null) or >= 0
 *   key               bytes
 *   value_length      varint   -1 (null) or >= 0
 *   value             bytes
 *   header_count      varint   >= 0
 *     header_key_len  varint   >= 0 (a header key is never null), UTF-8 bytes follow
 *     header_val_len  varint   -1 (null) or >= 0
 *     header_value    bytes
 *
 * Rules kept (each failure names the first bad record's index):
 *   1. exactly ``count`` records fill the bytes: no record past the end, no trailing bytes;
 *   2. every field lies inside its record's declared length and the record's fields use
 *      all of it;
 *   3. offset deltas are 0, 1, ..., count - 1 in order;
 *   4. lengths are -1 or >= 0 (header keys >= 0), header counts >= 0, keys present when
 *      ``key_required`` (compacted topics);
 *   5. every timestamp (base + delta, no int64 overflow) other than -1 lies in
 *      [ts_low, ts_high]; timestamp errors are reported only if the framing is sound, and
 *      then every offending record is listed (the first 64), as Kafka does.
 *
 * check_records(records, count, base_timestamp, ts_low, ts_high, key_required)
 *   -> (bad_index, error, message, max_timestamp, timestamp_errors)
 * error is 0 (valid; bad_index -1, message None), 1 (INVALID_RECORD) or 2 (INVALID_TIMESTAMP);
 * max_timestamp is the largest record timestamp when valid; timestamp_errors is, for
 * INVALID_TIMESTAMP, ((record index, timestamp or None when it overflows), ...), else ().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { OK = 0, INVALID_RECORD = 1, INVALID_TIMESTAMP = 2 };

#define MAX_TIMESTAMP_ERRORS 64

typedef struct {
    Py_ssize_t index; /* record that failed */
    int error;
    char message[256];
    /* every record whose timestamp is out of range (the first MAX_TIMESTAMP_ERRORS), as
     * Kafka lists each one in record_errors; overflowed[k] when base + delta overflows */
    int ts_errors;
    Py_ssize_t ts_index[MAX_TIMESTAMP_ERRORS];
    int64_t ts_value[MAX_TIMESTAMP_ERRORS];
    char ts_overflowed[MAX_TIMESTAMP_ERRORS];
} failure_t;

static void note_timestamp(failure_t *f, Py_ssize_t i, int64_t value, int overflowed) {
    if (f->ts_errors < MAX_TIMESTAMP_ERRORS) {
        f->ts_index[f->ts_errors] = i;
        f->ts_value[f->ts_errors] = value;
        f->ts_overflowed[f->ts_errors] = (char)overflowed;
    }
    f->ts_errors++;
}

/* Zigzag LEB128 at *p (not past end). 0 ok, -1 truncated, -2 too long or out of range. */
static inline int read_varint(const uint8_t **p, const uint8_t *end, int max_bytes, int64_t *out) {
    uint64_t v = 0;
    const uint8_t *q = *p;
    for (int i = 0; i < max_bytes; i++) {
        if (q >= end) return -1;
        uint8_t b = *q++;
        if (i == 9 && b > 1) return -2; /* the 10th byte holds only bit 63 */
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            if (max_bytes == 5 && v > 0xFFFFFFFFull) return -2;
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            *p = q;
            return 0;
        }
    }
    return -2;
}

/* RFC 3629 UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
static int valid_utf8(const uint8_t *s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        int len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
        else return 0;
        if (i + len > n) return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += len;
    }
    return 1;
}

#define FAIL(...)                                                              \
    do {                                                                       \
        f->index = i;                                                          \
        f->error = INVALID_RECORD;                                             \
        snprintf(f->message, sizeof f->message, __VA_ARGS__);                  \
        return;                                                                \
    } while (0)

/* Reads one varint field of record i into var, failing with the field's name. One-byte
 * varints (almost every length and delta of small records) take the inline path. */
#define FIELD(var, max_bytes, name, limit)                                                 \
    do {                                                                                   \
        if (p < (limit) && *p < 0x80) {                                                    \
            (var) = (int64_t)(*p >> 1) ^ -(int64_t)(*p & 1);                               \
            p++;                                                                           \
        } else {                                                                           \
            int rc_ = read_varint(&p, (limit), (max_bytes), &(var));                       \
            if (rc_ == -1)                                                                 \
                FAIL("record %zd: %s runs past the record's declared length of %lld bytes", \
                     i, (name), (long long)length);                                        \
            if (rc_ == -2)                                                                 \
                FAIL("record %zd: %s is an overlong or out-of-range varint", i, (name));   \
        }                                                                                  \
    } while (0)

static void walk(const uint8_t *data, Py_ssize_t size, Py_ssize_t count, int64_t base_ts,
                 int64_t ts_low, int64_t ts_high, int key_required, failure_t *f,
                 int64_t *max_ts_out) {
    const uint8_t *p = data;
    const uint8_t *end = data + size;
    int64_t max_ts = INT64_MIN;
    Py_ssize_t i;
    f->error = OK;
    for (i = 0; i < count; i++) {
        int64_t length = 0, td, od, kl, vl, hc;
        if (p >= end)
            FAIL("record %zd: the batch ends after %zd of its %zd records", i, i, count);
        {
            int rc = read_varint(&p, end, 5, &length);
            if (rc == -1) FAIL("record %zd: its length varint runs past the batch's end", i);
            if (rc == -2) FAIL("record %zd: its length is an overlong varint", i);
        }
        if (length < 6 || length > end - p)
            FAIL("record %zd: length %lld is invalid with %lld bytes left in the batch", i,
                 (long long)length, (long long)(end - p));
        const uint8_t *rec_end = p + length;
        p++; /* attributes */
        FIELD(td, 10, "timestamp delta", rec_end);
        FIELD(od, 5, "offset delta", rec_end);
        if (od != i)
            FAIL("record %zd: offset delta %lld, expected %zd (deltas must be 0..%zd in order)",
                 i, (long long)od, i, count - 1);
        FIELD(kl, 5, "key length", rec_end);
        if (kl < -1) FAIL("record %zd: key length %lld (only -1 means null)", i, (long long)kl);
        if (kl == -1 && key_required)
            FAIL("record %zd: null key on a compacted topic (cleanup.policy=compact needs keys)",
                 i);
        if (kl > rec_end - p)
            FAIL("record %zd: key of %lld bytes runs past the record's end", i, (long long)kl);
        if (kl > 0) p += kl;
        FIELD(vl, 5, "value length", rec_end);
        if (vl < -1) FAIL("record %zd: value length %lld (only -1 means null)", i, (long long)vl);
        if (vl > rec_end - p)
            FAIL("record %zd: value of %lld bytes runs past the record's end", i, (long long)vl);
        if (vl > 0) p += vl;
        FIELD(hc, 5, "header count", rec_end);
        if (hc < 0) FAIL("record %zd: header count %lld is negative", i, (long long)hc);
        /* each header takes at least 2 bytes */
        if (hc > (rec_end - p) / 2)
            FAIL("record %zd: header count %lld cannot fit in the record's %lld bytes left", i,
                 (long long)hc, (long long)(rec_end - p));
        for (int64_t h = 0; h < hc; h++) {
            int64_t hkl, hvl;
            FIELD(hkl, 5, "header key length", rec_end);
            if (hkl < 0)
                FAIL("record %zd: header %lld has key length %lld (a header key is never null)",
                     i, (long long)h, (long long)hkl);
            if (hkl > rec_end - p)
                FAIL("record %zd: header %lld key runs past the record's end", i, (long long)h);
            if (!valid_utf8(p, hkl))
                FAIL("record %zd: header %lld key is not valid UTF-8", i, (long long)h);
            p += hkl;
            FIELD(hvl, 5, "header value length", rec_end);
            if (hvl < -1)
                FAIL("record %zd: header %lld value length %lld (only -1 means null)", i,
                     (long long)h, (long long)hvl);
            if (hvl > rec_end - p)
                FAIL("record %zd: header %lld value runs past the record's end", i,
                     (long long)h);
            if (hvl > 0) p += hvl;
        }
        if (p != rec_end)
            FAIL("record %zd: its fields end %lld bytes before its declared length of %lld", i,
                 (long long)(rec_end - p), (long long)length);
        int64_t ts;
        if (__builtin_add_overflow(base_ts, td, &ts)) {
            note_timestamp(f, i, td, 1);
            continue;
        }
        if (ts > max_ts) max_ts = ts;
        if (ts != -1 && (ts < ts_low || ts > ts_high)) note_timestamp(f, i, ts, 0);
    }
    if (p != end) {
        i = count - 1;
        FAIL("%lld bytes are left after the batch's %zd records (recordsCount is wrong or "
             "the batch has trailing bytes)",
             (long long)(end - p), count);
    }
    if (f->ts_errors) {
        f->index = f->ts_index[0];
        f->error = INVALID_TIMESTAMP;
        if (f->ts_overflowed[0])
            snprintf(f->message, sizeof f->message,
                     "record %zd: timestamp delta %lld overflows a 64-bit timestamp", f->index,
                     (long long)f->ts_value[0]);
        else
            snprintf(f->message, sizeof f->message,
                     "record %zd: timestamp %lld is out of range, the topic accepts [%lld, "
                     "%lld] (message.timestamp.before.max.ms / after.max.ms); check the "
                     "producer's clock",
                     f->index, (long long)f->ts_value[0], (long long)ts_low, (long long)ts_high);
        return;
    }
    *max_ts_out = max_ts;
}

static PyObject *check_records(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    Py_ssize_t count;
    long long base_ts, ts_low, ts_high;
    int key_required;
    if (!PyArg_ParseTuple(args, "y*nLLLp:check_records", &buf, &count, &base_ts, &ts_low,
                          &ts_high, &key_required))
        return NULL;
    failure_t f;
    int64_t max_ts = INT64_MIN;
    f.message[0] = 0;
    f.index = -1;
    f.ts_errors = 0;
    if (count < 0) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "count must not be negative");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    walk((const uint8_t *)buf.buf, buf.len, count, base_ts, ts_low, ts_high, key_required, &f,
         &max_ts);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    if (f.error == OK)
        return Py_BuildValue("niOL()", (Py_ssize_t)-1, 0, Py_None, (long long)max_ts);
    if (f.error != INVALID_TIMESTAMP)
        return Py_BuildValue("nisL()", f.index, f.error, f.message, (long long)0);
    int n = f.ts_errors < MAX_TIMESTAMP_ERRORS ? f.ts_errors : MAX_TIMESTAMP_ERRORS;
    PyObject *bad = PyTuple_New(n);
    if (bad == NULL) return NULL;
    for (int k = 0; k < n; k++) {
        PyObject *item = f.ts_overflowed[k]
                             ? Py_BuildValue("nO", f.ts_index[k], Py_None)
                             : Py_BuildValue("nL", f.ts_index[k], (long long)f.ts_value[k]);
        if (item == NULL) {
            Py_DECREF(bad);
            return NULL;
        }
        PyTuple_SET_ITEM(bad, k, item);
    }
    return Py_BuildValue("nisLN", f.index, f.error, f.message, (long long)0, bad);
}

static PyMethodDef methods[] = {
    {"check_records", check_records, METH_VARARGS,
     "check_records(records, count, base_timestamp, ts_low, ts_high, key_required)\n"
     "-> (bad_index, error, message, max_timestamp); see the module source's header."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "streamhouse._batchcheck",
    .m_doc = "Record walk of Kafka RecordBatch v2 (see streamhouse/_batchcheck.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__batchcheck(void) { return PyModule_Create(&module); }
