/* ingest._grpcproduce: a gRPC ProduceBatchRequest's wire bytes to Kafka RecordBatch v2, in C.
 *
 * The gRPC produce path (ingest/produce.py) hands this module the raw request bytes, so no
 * protobuf object and no Python object per record is ever built. Two calls:
 *
 * scan(data) -> (topic, partition, producer_id, producer_epoch, base_sequence, record_count)
 *   walks the whole message as protobuf's upb parser does and returns its scalar fields
 *   (partition and producer_id None when absent); raises ValueError naming what is wrong and
 *   where when the bytes are not a valid ProduceBatchRequest.
 *
 * transcode(data, partition_count, partition, keyless_partition, max_record_bytes,
 *           max_batch_bytes, producer_id, producer_epoch, base_sequence, log_append_time,
 *           now_ms, ts_low, ts_high, key_required, max_message_bytes)
 *   -> (keyless_used, [(partition, batch, record_count, min_timestamp, max_timestamp), ...])
 *   validates every record, assigns partitions and encodes one batch per partition written,
 *   in partition order (the rules are ingest/produce.py's docstring). ``partition`` is -1
 *   when the request names none; ``keyless_partition`` is where the request's keyless
 *   records go (the caller's round robin), and ``keyless_used`` says whether any went there.
 *   A refused request raises ValueError with the message plan_produce documents. It walks
 *   the bytes twice -- checking each record and adding up its partition's batch size, then
 *   writing it -- so its memory is the batches and one entry per partition, never one per
 *   record (a request of millions of empty records costs no more than its batches).
 *
 * Protobuf wire format read (streamhouse/proto/streamhouse.proto, package streamhouse.v1):
 *
 *   tag             varint   field_number << 3 | wire_type; at most 5 bytes, < 2^32,
 *                            field number >= 1
 *   wire type 0     varint   at most 10 bytes; int32 fields keep the low 32 bits
 *   wire type 1     8 bytes  (skipped)
 *   wire type 2     varint length (at most 5 bytes, <= the bytes left) then that many bytes
 *   wire type 3/4   start/end of a group (skipped, nesting matched by field number)
 *   wire type 5     4 bytes  (skipped)
 *
 *   ProduceBatchRequest  1 topic string, 2 partition int32 (optional), 3 records Record
 *                        (repeated), 4 producer_id int64 (optional), 5 producer_epoch int32,
 *                        6 base_sequence int32
 *   Record               1 key bytes (optional), 2 value bytes (optional), 3 headers Header
 *                        (repeated), 4 timestamp_ms int64, 5 offset int64 (ignored)
 *   Header               1 key string, 2 value bytes (optional)
 *
 * As upb does: a known field with another wire type, and every unknown field, is skipped; a
 * singular field seen twice keeps its last value; string fields must be UTF-8 (no surrogates,
 * no overlong forms); messages and groups nest at most 100 deep.
 *
 * Batch written (the layout tables of streamhouse/recordbatch.py): base offset 0, partition
 * leader epoch -1, magic 2, CRC-32C (Castagnoli) of everything from the attributes on,
 * attributes 0, base timestamp = the first record's, the producer fields (or -1), then per
 * record: zigzag varint length, attributes 0, timestamp delta, offset delta, key, value,
 * header count and headers -- the bytes recordbatch.encode_batch writes for the same records.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 100
#define BATCH_HEADER 61
#define CRC_START 21

/* ------------------------------------------------------------------------------------- */
/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the SSE4.2 crc32 instruction where
 * the CPU has it, else slicing by 8 over tables (both tested against the crc32c package). */

static uint32_t crc_table[8][256];
static int crc_hardware;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#define HAVE_CRC_HARDWARE 1

__attribute__((target("sse4.2"))) static uint32_t crc32c_hardware(const uint8_t *p, size_t n) {
    uint64_t c = 0xFFFFFFFFu;
    while (n && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    while (n--) c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c ^ 0xFFFFFFFFu;
}
#endif

static uint32_t crc32c_software(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
        n--;
    }
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi =
            (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
            crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
            crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xFF];
    return c ^ 0xFFFFFFFFu;
}

static uint32_t crc32c(const uint8_t *p, size_t n) {
#ifdef HAVE_CRC_HARDWARE
    if (crc_hardware) return crc32c_hardware(p, n);
#endif
    return crc32c_software(p, n);
}

/* ------------------------------------------------------------------------------------- */
/* Kafka murmur2 (seed 0x9747b28c), as streamhouse/recordbatch.py's murmur2 */

static int32_t murmur2(const uint8_t *data, int64_t length) {
    const uint32_t m = 0x5BD1E995u;
    uint32_t h = 0x9747B28Cu ^ (uint32_t)length;
    int64_t n4 = length >> 2;
    for (int64_t i = 0; i < n4; i++) {
        const uint8_t *q = data + 4 * i;
        uint32_t k = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 |
                     (uint32_t)q[3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h = (h * m) ^ k;
    }
    int64_t tail = length & ~(int64_t)3;
    switch (length & 3) {
        case 3:
            h ^= (uint32_t)data[tail + 2] << 16;
            /* fall through */
        case 2:
            h ^= (uint32_t)data[tail + 1] << 8;
            /* fall through */
        case 1:
            h ^= data[tail];
            h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

/* ------------------------------------------------------------------------------------- */
/* protobuf wire walk */

typedef struct {
    const uint8_t *start; /* the whole request, for byte positions in messages */
    Py_ssize_t record;    /* the record and header being walked, -1 outside one */
    int64_t header;
    char message[320];
} walk_error;

/* Sets the message: "record R: header H: <why> at byte N" (the parts that apply). */
static int fail(walk_error *e, const uint8_t *at, const char *why) {
    char where[80] = "";
    if (e->record >= 0 && e->header >= 0)
        snprintf(where, sizeof where, "record %zd: header %lld: ", e->record,
                 (long long)e->header);
    else if (e->record >= 0)
        snprintf(where, sizeof where, "record %zd: ", e->record);
    snprintf(e->message, sizeof e->message, "%s%s at byte %lld", where, why,
             (long long)(at - e->start));
    return -1;
}

/* A base-128 varint of at most `max_bytes` bytes; 0 on success (the cursor moves past it). */
static int read_varint_upto(const uint8_t **pp, const uint8_t *end, int max_bytes,
                            uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (p >= end) return -1;
        uint8_t b = *p++;
        v |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            *pp = p;
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int read_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    return read_varint_upto(pp, end, 10, out);
}

/* A tag: at most 5 bytes and below 2^32; 0 on success. */
static int read_tag(const uint8_t **pp, const uint8_t *end, uint32_t *out) {
    const uint8_t *p = *pp;
    uint64_t v;
    if (read_varint_upto(&p, end, 5, &v) < 0 || v > 0xFFFFFFFFu) return -1;
    *pp = p;
    *out = (uint32_t)v;
    return 0;
}

/* A length prefix: at most 5 bytes, within the bytes left. */
static int read_length(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    uint64_t v;
    if (read_varint_upto(&p, end, 5, &v) < 0) return -1;
    if (v >= 0x7FFFFFFFu || v > (uint64_t)(end - p)) return -1;
    *pp = p;
    *out = v;
    return 0;
}

static int utf8_valid(const uint8_t *s, uint64_t n) {
    const uint8_t *end = s + n;
    while (s < end) {
        uint8_t c = *s;
        if (c < 0x80) {
            s++;
            continue;
        }
        int len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (end - s < len) return 0;
        for (int i = 1; i < len; i++) {
            if ((s[i] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        s += len;
    }
    return 1;
}

/* Skips the value of a field whose tag was just read (an unknown field, or a known one with
 * another wire type). Groups are skipped to their matching end. 0 on success. */
static int skip_value(const uint8_t **pp, const uint8_t *end, uint32_t tag, int depth,
                      walk_error *e) {
    const uint8_t *p = *pp;
    uint64_t v;
    switch (tag & 7) {
        case 0:
            if (read_varint(&p, end, &v)) return fail(e, p, "a varint is cut short");
            break;
        case 1:
            if (end - p < 8) return fail(e, p, "a 64-bit field is cut short");
            p += 8;
            break;
        case 2:
            if (read_length(&p, end, &v))
                return fail(e, p, "a length runs past the end of its message");
            p += v;
            break;
        case 5:
            if (end - p < 4) return fail(e, p, "a 32-bit field is cut short");
            p += 4;
            break;
        case 3: {
            if (depth <= 0) return fail(e, p, "messages nest more than 100 deep");
            for (;;) {
                uint32_t inner;
                const uint8_t *at = p;
                if (p >= end) return fail(e, p, "a group has no end");
                if (read_tag(&p, end, &inner) || (inner >> 3) == 0)
                    return fail(e, at, "an invalid tag");
                if ((inner & 7) == 4) {
                    if ((inner >> 3) != (tag >> 3))
                        return fail(e, at, "a group ends with another field's number");
                    break;
                }
                if (skip_value(&p, end, inner, depth - 1, e)) return -1;
            }
            break;
        }
        case 4:
            return fail(e, p, "a group end without its start");
        default:
            return fail(e, p, "an invalid wire type (6 or 7)");
    }
    *pp = p;
    return 0;
}

/* One record as read from the request (the walk keeps one at a time, never a list). */
typedef struct {
    const uint8_t *key; /* NULL: null key */
    const uint8_t *value;
    const uint8_t *body; /* the Record message's bytes, walked again for its headers */
    const uint8_t *body_end;
    int64_t key_len;
    int64_t value_len;
    int64_t header_bytes; /* header key and value bytes: what max_record_bytes counts */
    int64_t header_wire;  /* the headers as Kafka encodes them, after the count */
    int64_t header_count;
    int64_t timestamp;
} record;

/* The request's scalar fields. */
typedef struct {
    const uint8_t *topic;
    uint64_t topic_len;
    int has_partition, has_producer_id;
    int32_t partition, producer_epoch, base_sequence;
    int64_t producer_id;
    Py_ssize_t count; /* records */
} request;

/* Called for each record in request order; nonzero stops the walk with that result. */
typedef int (*record_fn)(void *ctx, Py_ssize_t index, record *r, walk_error *e);

static int zz_len(int64_t n) {
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    int len = 1;
    while (z > 0x7F) {
        z >>= 7;
        len++;
    }
    return len;
}

static uint8_t *put_zz(uint8_t *out, int64_t n) {
    uint64_t z = ((uint64_t)n << 1) ^ (uint64_t)(n >> 63);
    while (z > 0x7F) {
        *out++ = (uint8_t)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    *out++ = (uint8_t)z;
    return out;
}

/* A Header message; its key and value (value NULL when absent). */
static int walk_header(const uint8_t *p, const uint8_t *end, int depth, walk_error *e,
                       const uint8_t **key, uint64_t *key_len,
                       const uint8_t **value, uint64_t *value_len) {
    *key = p;
    *key_len = 0;
    *value = NULL;
    *value_len = 0;
    while (p < end) {
        uint32_t tag;
        const uint8_t *at = p;
        if (read_tag(&p, end, &tag) || (tag >> 3) == 0) return fail(e, at, "an invalid tag");
        uint32_t field = tag >> 3;
        if ((tag & 7) == 2 && (field == 1 || field == 2)) {
            uint64_t n;
            if (read_length(&p, end, &n))
                return fail(e, p, "a length runs past the end of its message");
            if (field == 1) {
                if (!utf8_valid(p, n)) return fail(e, p, "the key is not valid UTF-8");
                *key = p;
                *key_len = n;
            } else {
                *value = p;
                *value_len = n;
            }
            p += n;
        } else if (skip_value(&p, end, tag, depth - 1, e)) {
            return -1;
        }
    }
    return 0;
}

/* A Record message into *r (headers summed, not kept). */
static int walk_record(const uint8_t *p, const uint8_t *end, int depth, walk_error *e,
                       Py_ssize_t index, record *r) {
    e->record = index;
    e->header = -1;
    memset(r, 0, sizeof *r);
    r->key_len = -1;
    r->value_len = -1;
    r->body = p;
    r->body_end = end;
    if (depth <= 0) return fail(e, p, "messages nest more than 100 deep");
    while (p < end) {
        uint32_t tag;
        const uint8_t *at = p;
        if (read_tag(&p, end, &tag) || (tag >> 3) == 0) return fail(e, at, "an invalid tag");
        uint32_t field = tag >> 3, wire = tag & 7;
        uint64_t n;
        if (wire == 2 && field <= 3) {
            if (read_length(&p, end, &n))
                return fail(e, p, "a length runs past the end of its message");
            if (field == 1) {
                r->key = p;
                r->key_len = (int64_t)n;
            } else if (field == 2) {
                r->value = p;
                r->value_len = (int64_t)n;
            } else {
                e->header = r->header_count;
                const uint8_t *hk, *hv;
                uint64_t hkl, hvl;
                if (walk_header(p, p + n, depth - 1, e, &hk, &hkl, &hv, &hvl)) return -1;
                e->header = -1;
                r->header_count++;
                r->header_bytes += (int64_t)hkl + (hv ? (int64_t)hvl : 0);
                r->header_wire += zz_len((int64_t)hkl) + (int64_t)hkl +
                                  (hv ? zz_len((int64_t)hvl) + (int64_t)hvl : 1);
            }
            p += n;
        } else if (wire == 0 && (field == 4 || field == 5)) {
            if (read_varint(&p, end, &n)) return fail(e, p, "a varint is cut short");
            if (field == 4) r->timestamp = (int64_t)n;
        } else if (skip_value(&p, end, tag, depth - 1, e)) {
            return -1;
        }
    }
    if (r->key == NULL) r->key_len = -1;
    e->record = -1;
    return 0;
}

/* The whole request: scalars into *q, each record to on_record (when not NULL). */
static int walk_request(const uint8_t *p, Py_ssize_t len, request *q, record_fn on_record,
                        void *ctx, walk_error *e) {
    const uint8_t *end = p + len;
    e->start = p;
    e->record = -1;
    e->header = -1;
    memset(q, 0, sizeof *q);
    while (p < end) {
        uint32_t tag;
        const uint8_t *at = p;
        if (read_tag(&p, end, &tag) || (tag >> 3) == 0) return fail(e, at, "an invalid tag");
        uint32_t field = tag >> 3, wire = tag & 7;
        uint64_t n;
        if (wire == 2 && (field == 1 || field == 3)) {
            if (read_length(&p, end, &n))
                return fail(e, p, "a length runs past the end of its message");
            if (field == 1) {
                if (!utf8_valid(p, n)) return fail(e, p, "the topic is not valid UTF-8");
                q->topic = p;
                q->topic_len = n;
            } else {
                record r;
                if (walk_record(p, p + n, MAX_DEPTH, e, q->count, &r)) return -1;
                if (on_record != NULL) {
                    int rc = on_record(ctx, q->count, &r, e);
                    if (rc) return rc;
                }
                q->count++;
            }
            p += n;
        } else if (wire == 0 && field >= 2 && field <= 6 && field != 3) {
            if (read_varint(&p, end, &n)) return fail(e, p, "a varint is cut short");
            switch (field) {
                case 2:
                    q->has_partition = 1;
                    q->partition = (int32_t)(uint32_t)n;
                    break;
                case 4:
                    q->has_producer_id = 1;
                    q->producer_id = (int64_t)n;
                    break;
                case 5:
                    q->producer_epoch = (int32_t)(uint32_t)n;
                    break;
                default:
                    q->base_sequence = (int32_t)(uint32_t)n;
            }
        } else if (skip_value(&p, end, tag, MAX_DEPTH, e)) {
            return -1;
        }
    }
    return 0;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*:scan", &buf)) return NULL;
    request q;
    walk_error e;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = walk_request((const uint8_t *)buf.buf, buf.len, &q, NULL, NULL, &e);
    Py_END_ALLOW_THREADS
    if (rc) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, e.message);
        return NULL;
    }
    PyObject *topic = PyUnicode_DecodeUTF8((const char *)q.topic, (Py_ssize_t)q.topic_len, NULL);
    PyBuffer_Release(&buf);
    if (topic == NULL) return NULL;
    PyObject *partition = q.has_partition ? PyLong_FromLong(q.partition) : Py_NewRef(Py_None);
    PyObject *producer =
        q.has_producer_id ? PyLong_FromLongLong(q.producer_id) : Py_NewRef(Py_None);
    if (partition == NULL || producer == NULL) {
        Py_DECREF(topic);
        Py_XDECREF(partition);
        Py_XDECREF(producer);
        return NULL;
    }
    return Py_BuildValue("NNNiin", topic, partition, producer, (int)q.producer_epoch,
                         (int)q.base_sequence, q.count);
}

/* ------------------------------------------------------------------------------------- */
/* transcode: two walks over the request, no per-record memory.
 * Walk 1 (plan_record) checks each record, picks its partition and adds its encoded size to
 * its partition's group; walk 2 (write_record) writes it into its group's batch. */

typedef struct {
    int32_t partition;
    int32_t count;   /* records (walk 1), records written (walk 2) */
    int64_t base_ts, min_ts, max_ts;
    int64_t size;    /* the whole batch, header included */
    uint8_t *out;    /* write cursor into the batch */
    PyObject *batch; /* bytes object */
} group;

typedef struct {
    int32_t partition_count, partition, keyless_partition;
    long long max_record_bytes, max_batch_bytes, max_message_bytes;
    long long producer_id;
    int32_t producer_epoch, base_sequence;
    int log_append_time, key_required;
    long long now_ms, ts_low, ts_high;
} rules;

typedef struct {
    const rules *r;
    group *groups;
    Py_ssize_t ngroups, capacity;
    int32_t *table; /* partition -> group index, open addressing; -1 empty */
    size_t slots;
    int64_t total;
    int keyless_used;
} plan_state;

static int by_partition(const void *a, const void *b) {
    int32_t x = ((const group *)a)->partition, y = ((const group *)b)->partition;
    return (x > y) - (x < y);
}

static int out_of_memory(walk_error *e) {
    snprintf(e->message, sizeof e->message, "out of memory");
    return -2;
}

static size_t slot_of(const plan_state *st, int32_t partition) {
    size_t h = ((uint32_t)partition * 0x9E3779B1u) & (st->slots - 1);
    while (st->table[h] >= 0 && st->groups[st->table[h]].partition != partition)
        h = (h + 1) & (st->slots - 1);
    return h;
}

/* Rebuilds the table for the groups as they are now (after growth or sorting). */
static int rehash(plan_state *st, size_t slots) {
    int32_t *table = malloc(slots * sizeof(int32_t));
    if (table == NULL) return -1;
    memset(table, 0xFF, slots * sizeof(int32_t));
    free(st->table);
    st->table = table;
    st->slots = slots;
    for (Py_ssize_t k = 0; k < st->ngroups; k++) st->table[slot_of(st, st->groups[k].partition)] = (int32_t)k;
    return 0;
}

static int32_t target_of(const rules *r, const record *rec) {
    if (r->partition >= 0) return r->partition;
    if (rec->key != NULL)
        return (int32_t)(((uint32_t)murmur2(rec->key, rec->key_len) & 0x7FFFFFFFu) %
                         (uint32_t)r->partition_count);
    return r->keyless_partition;
}

static int64_t timestamp_of(const rules *r, const record *rec) {
    if (r->log_append_time || rec->timestamp == 0) return r->now_ms;
    return rec->timestamp;
}

static int64_t record_length(const record *rec, int64_t delta, int64_t offset_delta) {
    return 1 + zz_len(delta) + zz_len(offset_delta) +
           (rec->key ? zz_len(rec->key_len) + rec->key_len : 1) +
           (rec->value ? zz_len(rec->value_len) + rec->value_len : 1) +
           zz_len(rec->header_count) + rec->header_wire;
}

static int plan_record(void *ctx, Py_ssize_t i, record *rec, walk_error *e) {
    plan_state *st = ctx;
    const rules *r = st->r;
    if (rec->key == NULL && r->key_required) {
        snprintf(e->message, sizeof e->message,
                 "record %zd has no key: a compacted topic (cleanup.policy=compact) keeps "
                 "the latest record of each key, so every record needs one",
                 i);
        return -1;
    }
    int64_t size = (rec->key ? rec->key_len : 0) + (rec->value ? rec->value_len : 0) +
                   rec->header_bytes;
    if (size > r->max_record_bytes) {
        snprintf(e->message, sizeof e->message, "record %zd is %lld bytes, over the %lld-byte limit",
                 i, (long long)size, (long long)r->max_record_bytes);
        return -1;
    }
    st->total += size;
    int32_t target = target_of(r, rec);
    if (r->partition < 0 && rec->key == NULL) st->keyless_used = 1;
    int64_t ts = timestamp_of(r, rec);
    if (!r->log_append_time && (ts < r->ts_low || ts > r->ts_high)) {
        snprintf(e->message, sizeof e->message,
                 "record %zd: timestamp_ms %lld is out of range; the topic accepts "
                 "%lld..%lld (message.timestamp.before.max.ms / after.max.ms around the "
                 "server's clock): fix the producer's clock or send 0 for server time",
                 i, (long long)ts, (long long)r->ts_low, (long long)r->ts_high);
        return -1;
    }
    size_t h = slot_of(st, target);
    group *g;
    if (st->table[h] < 0) {
        if (st->ngroups == st->capacity) {
            Py_ssize_t cap = st->capacity * 2;
            group *grown = realloc(st->groups, (size_t)cap * sizeof(group));
            if (grown == NULL) return out_of_memory(e);
            st->groups = grown;
            st->capacity = cap;
        }
        g = &st->groups[st->ngroups];
        memset(g, 0, sizeof *g);
        g->partition = target;
        g->base_ts = g->min_ts = g->max_ts = ts;
        st->table[h] = (int32_t)st->ngroups++;
        if ((size_t)st->ngroups * 2 > st->slots && rehash(st, st->slots * 2))
            return out_of_memory(e);
    } else {
        g = &st->groups[st->table[h]];
    }
    if (ts < g->min_ts) g->min_ts = ts;
    if (ts > g->max_ts) g->max_ts = ts;
    /* The batch stores timestamp - base timestamp as a 64-bit varint. */
    int64_t delta;
    if (__builtin_sub_overflow(ts, g->base_ts, &delta)) {
        snprintf(e->message, sizeof e->message,
                 "record %zd: timestamp_ms %lld is too far from %lld, the first timestamp of "
                 "its partition in this request (a batch stores their difference in 64 "
                 "bits): send records this far apart in separate requests",
                 i, (long long)ts, (long long)g->base_ts);
        return -1;
    }
    int64_t length = record_length(rec, delta, g->count++);
    g->size += zz_len(length) + length;
    return 0;
}

/* After walk 1: the request-wide checks, groups in partition order with their batch sizes. */
static int finish_plan(plan_state *st, walk_error *e) {
    const rules *r = st->r;
    if (st->total > r->max_batch_bytes) {
        snprintf(e->message, sizeof e->message,
                 "the batch is %lld bytes, over the %lld-byte limit: split it",
                 (long long)st->total, (long long)r->max_batch_bytes);
        return -1;
    }
    qsort(st->groups, (size_t)st->ngroups, sizeof(group), by_partition);
    if (rehash(st, st->slots)) return out_of_memory(e);
    int64_t encoded = 0;
    for (Py_ssize_t k = 0; k < st->ngroups; k++) {
        group *g = &st->groups[k];
        g->size += BATCH_HEADER;
        encoded += g->size;
        if (encoded > r->max_batch_bytes) {
            snprintf(e->message, sizeof e->message,
                     "the batch encodes to over %lld bytes (the limit): split it",
                     (long long)r->max_batch_bytes);
            return -1;
        }
        if (g->size > r->max_message_bytes) {
            snprintf(e->message, sizeof e->message,
                     "the records for partition %d encode to %lld bytes, over the topic's "
                     "max.message.bytes %lld: split the batch",
                     (int)g->partition, (long long)g->size, (long long)r->max_message_bytes);
            return -1;
        }
    }
    return 0;
}

static void put_be(uint8_t *out, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static void start_batches(plan_state *st) {
    const rules *r = st->r;
    for (Py_ssize_t k = 0; k < st->ngroups; k++) {
        group *g = &st->groups[k];
        uint8_t *b = (uint8_t *)PyBytes_AS_STRING(g->batch);
        put_be(b, 0, 8);                                   /* base offset */
        put_be(b + 8, (uint64_t)(g->size - 12), 4);        /* batch length */
        put_be(b + 12, (uint64_t)(int64_t)-1, 4);          /* partition leader epoch */
        b[16] = 2;                                         /* magic */
        put_be(b + 21, 0, 2);                              /* attributes */
        put_be(b + 23, (uint64_t)(g->count - 1), 4);       /* last offset delta */
        put_be(b + 27, (uint64_t)g->base_ts, 8);
        put_be(b + 35, (uint64_t)g->max_ts, 8);
        put_be(b + 43, (uint64_t)r->producer_id, 8);
        put_be(b + 51, (uint64_t)(int64_t)r->producer_epoch, 2);
        put_be(b + 53, (uint64_t)(int64_t)r->base_sequence, 4);
        put_be(b + 57, (uint64_t)g->count, 4);
        g->out = b + BATCH_HEADER;
        g->count = 0; /* now counts the records written: their offset deltas */
    }
}

static int write_record(void *ctx, Py_ssize_t i, record *rec, walk_error *e) {
    (void)i;
    plan_state *st = ctx;
    group *g = &st->groups[st->table[slot_of(st, target_of(st->r, rec))]];
    int64_t delta = (int64_t)((uint64_t)timestamp_of(st->r, rec) - (uint64_t)g->base_ts);
    int64_t offset_delta = g->count++;
    uint8_t *o = put_zz(g->out, record_length(rec, delta, offset_delta));
    *o++ = 0;
    o = put_zz(o, delta);
    o = put_zz(o, offset_delta);
    if (rec->key) {
        o = put_zz(o, rec->key_len);
        memcpy(o, rec->key, (size_t)rec->key_len);
        o += rec->key_len;
    } else {
        *o++ = 1;
    }
    if (rec->value) {
        o = put_zz(o, rec->value_len);
        memcpy(o, rec->value, (size_t)rec->value_len);
        o += rec->value_len;
    } else {
        *o++ = 1;
    }
    o = put_zz(o, rec->header_count);
    /* the headers in order, walked again (walk 1 found the record sound) */
    const uint8_t *p = rec->body;
    while (rec->header_count && p < rec->body_end) {
        uint32_t tag = 0;
        uint64_t n = 0;
        if (read_tag(&p, rec->body_end, &tag)) break;
        if (tag == ((3u << 3) | 2u)) {
            if (read_length(&p, rec->body_end, &n)) break;
            const uint8_t *hk, *hv;
            uint64_t hkl, hvl;
            if (walk_header(p, p + n, MAX_DEPTH, e, &hk, &hkl, &hv, &hvl)) break;
            o = put_zz(o, (int64_t)hkl);
            memcpy(o, hk, hkl);
            o += hkl;
            if (hv) {
                o = put_zz(o, (int64_t)hvl);
                memcpy(o, hv, hvl);
                o += hvl;
            } else {
                *o++ = 1;
            }
            p += n;
        } else if (skip_value(&p, rec->body_end, tag, MAX_DEPTH, e)) {
            break;
        }
    }
    g->out = o;
    return 0;
}

static PyObject *transcode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    rules r;
    int pc, part, keyless, epoch, seq;
    if (!PyArg_ParseTuple(args, "y*iiiLLLiipLLLpL:transcode", &buf, &pc, &part, &keyless,
                          &r.max_record_bytes, &r.max_batch_bytes, &r.producer_id, &epoch, &seq,
                          &r.log_append_time, &r.now_ms, &r.ts_low, &r.ts_high, &r.key_required,
                          &r.max_message_bytes))
        return NULL;
    r.partition_count = pc;
    r.partition = part;
    r.keyless_partition = keyless;
    r.producer_epoch = epoch;
    r.base_sequence = seq;
    if (pc <= 0 || part >= pc || keyless < 0 || keyless >= pc) {
        PyBuffer_Release(&buf);
        PyErr_Format(PyExc_ValueError,
                     "transcode: partition %d and keyless partition %d must lie in 0..%d", part,
                     keyless, pc - 1);
        return NULL;
    }
    const uint8_t *data = (const uint8_t *)buf.buf;
    plan_state st = {.r = &r, .capacity = 8};
    st.groups = malloc((size_t)st.capacity * sizeof(group));
    PyObject *result = NULL;
    request q;
    walk_error e;
    int rc;
    if (st.groups == NULL || rehash(&st, 16)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    rc = walk_request(data, buf.len, &q, plan_record, &st, &e);
    if (rc == 0 && q.count == 0) {
        snprintf(e.message, sizeof e.message, "the batch is empty: send at least one record");
        rc = -1;
    }
    if (rc == 0) rc = finish_plan(&st, &e);
    Py_END_ALLOW_THREADS
    if (rc) {
        if (rc == -2)
            PyErr_NoMemory();
        else
            PyErr_SetString(PyExc_ValueError, e.message);
        goto done;
    }
    Py_ssize_t k;
    for (k = 0; k < st.ngroups; k++) {
        st.groups[k].batch = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)st.groups[k].size);
        if (st.groups[k].batch == NULL) break;
    }
    if (k < st.ngroups) {
        while (k-- > 0) Py_DECREF(st.groups[k].batch);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    start_batches(&st);
    walk_request(data, buf.len, &q, write_record, &st, &e);
    for (Py_ssize_t j = 0; j < st.ngroups; j++) {
        uint8_t *b = (uint8_t *)PyBytes_AS_STRING(st.groups[j].batch);
        put_be(b + 17, crc32c(b + CRC_START, (size_t)(st.groups[j].size - CRC_START)), 4);
    }
    Py_END_ALLOW_THREADS
    PyObject *list = PyList_New(st.ngroups);
    for (k = 0; list != NULL && k < st.ngroups; k++) {
        group *g = &st.groups[k];
        PyObject *item = Py_BuildValue("iOiLL", (int)g->partition, g->batch, (int)g->count,
                                       (long long)g->min_ts, (long long)g->max_ts);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, k, item);
    }
    for (k = 0; k < st.ngroups; k++) Py_DECREF(st.groups[k].batch);
    if (list != NULL)
        result = Py_BuildValue("ON", st.keyless_used ? Py_True : Py_False, list);
done:
    free(st.groups);
    free(st.table);
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *py_crc32c(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    int software = 0;
    if (!PyArg_ParseTuple(args, "y*|p:crc32c", &buf, &software)) return NULL;
    const uint8_t *p = (const uint8_t *)buf.buf;
    uint32_t c = software ? crc32c_software(p, (size_t)buf.len) : crc32c(p, (size_t)buf.len);
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLong(c);
}

static PyObject *py_crc_hardware(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(crc_hardware);
}

static PyObject *py_murmur2(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "y*:murmur2", &buf)) return NULL;
    int32_t h = murmur2((const uint8_t *)buf.buf, buf.len);
    PyBuffer_Release(&buf);
    return PyLong_FromLong(h);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(data) -> (topic, partition, producer_id, producer_epoch, base_sequence, "
     "record_count); ValueError when data is not a valid ProduceBatchRequest."},
    {"transcode", transcode, METH_VARARGS,
     "transcode(data, partition_count, partition, keyless_partition, max_record_bytes, "
     "max_batch_bytes, producer_id, producer_epoch, base_sequence, log_append_time, now_ms, "
     "ts_low, ts_high, key_required, max_message_bytes) -> (keyless_used, [(partition, batch, "
     "record_count, min_timestamp, max_timestamp), ...]); see the module source's header."},
    {"crc32c", py_crc32c, METH_VARARGS,
     "crc32c(data, software=False) -> CRC-32C (Castagnoli) of data, by the table code when "
     "software is true, else by the code batches use (the CPU's crc32 instruction if it has "
     "one)."},
    {"crc_hardware", py_crc_hardware, METH_NOARGS,
     "crc_hardware() -> whether batch CRCs use the CPU's crc32 instruction."},
    {"murmur2", py_murmur2, METH_VARARGS, "murmur2(data) -> Kafka's murmur2 (signed 32-bit)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "ingest._grpcproduce",
    .m_doc = "gRPC ProduceBatchRequest bytes to Kafka RecordBatch v2 (see ingest/_grpcproduce.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__grpcproduce(void) {
    crc_init();
#ifdef HAVE_CRC_HARDWARE
    __builtin_cpu_init();
    crc_hardware = __builtin_cpu_supports("sse4.2");
#endif
    return PyModule_Create(&module);
}
