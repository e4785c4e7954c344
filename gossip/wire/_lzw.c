/*
 * gossip.wire._lzw: optional native accelerator for gossip/wire/lzw.py.
 *
 * Owns: a C port of the two hot loops of gossip/wire/lzw.py (_compress and
 * _decompress): Go's compress/lzw, LSB order, literal width 8, leading clear
 * code, codes 9..12 bits, clear code when the next code would be 4095.
 * Does not: memoise, know about msgpack or memberlist framing, or raise the
 * project's DecodeError (it raises ValueError with the same messages as
 * lzw.py; lzw.py translates). gossip/wire/lzw.py stays the reference: every rule
 * below mirrors a line there, and tests/unit/test_lzw_native.py checks both
 * give identical bytes and identical errors on arbitrary input.
 *
 * The GIL is held throughout (calls are short: a datagram is ~1,400 bytes),
 * so the static compression table needs no locking.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define LZW_CLEAR 256
#define LZW_EOF 257
#define LZW_MAX_CODE 4095
#define LZW_MAX_WIDTH 12

/* ------------------------------------------------------------ compress */

/* Open-addressing hash of (prefix code << 8 | byte) -> code, like Go's
 * writer: 4 slots per possible code keeps probe chains short. A slot holds
 * key << 12 | code; 0 is empty (a stored code is >= 258, so never 0). */
#define TABLE_BITS 14
#define TABLE_SIZE (1u << TABLE_BITS)
#define TABLE_MASK (TABLE_SIZE - 1u)

static uint32_t table[TABLE_SIZE];
/* Slots filled since the last reset: clearing only those keeps a small
 * packet from paying for a 64 KiB memset. At most 4095 - 258 per reset. */
static uint16_t used[LZW_MAX_CODE];
static int n_used = 0;

static void
table_reset(void)
{
    for (int i = 0; i < n_used; i++) {
        table[used[i]] = 0;
    }
    n_used = 0;
}

static inline uint32_t
table_hash(uint32_t key)
{
    return ((key >> 12) ^ key) & TABLE_MASK;
}

/* Bit writer: LSB first, flushed a byte at a time. 64 pending bits hold
 * any two 12-bit codes plus a partial byte. */
typedef struct {
    unsigned char *out;
    Py_ssize_t pos;
    uint64_t bits;
    unsigned nbits;
} writer;

static inline void
put_code(writer *w, uint32_t code, unsigned width)
{
    w->bits |= (uint64_t)code << w->nbits;
    w->nbits += width;
    while (w->nbits >= 8) {
        w->out[w->pos++] = (unsigned char)(w->bits & 0xFF);
        w->bits >>= 8;
        w->nbits -= 8;
    }
}

/* Go's incHi: widen when hi reaches 2**width; at 4095 send a clear code (at the
 * current, 12-bit width) and start over. Returns 1 when it cleared, so the caller
 * resets its table. */
static inline int
inc_hi(writer *w, uint32_t *hi, unsigned *width, uint32_t *overflow)
{
    (*hi)++;
    if (*hi == *overflow) {
        (*width)++;
        *overflow <<= 1;
    }
    if (*hi != LZW_MAX_CODE)
        return 0;
    put_code(w, LZW_CLEAR, *width);
    *width = 9;
    *hi = LZW_EOF;
    *overflow = 512;
    return 1;
}

static PyObject *
lzw_compress(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    /* Upper bound: one code of <= 12 bits per input byte, a clear code per
     * table reset (< one per 3,837 bytes), plus clear, last code, clear and
     * EOF around the stream: 2 bytes per input byte and 8 to spare. */
    if (n > (PY_SSIZE_T_MAX - 16) / 2) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, 2 * n + 16);
    if (result == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    writer w = {(unsigned char *)PyBytes_AS_STRING(result), 0, 0, 0};
    unsigned width = 9;
    uint32_t hi = LZW_EOF; /* last assigned code */
    uint32_t overflow = 512;

    /* Leading clear code (Go >= 1.17 emits it unconditionally). */
    put_code(&w, LZW_CLEAR, width);
    if (n == 0) {
        /* Go's Close on an empty stream: clear (written) then EOF. */
        put_code(&w, LZW_EOF, width);
    }
    else {
        table_reset();
        uint32_t code = data[0];
        for (Py_ssize_t i = 1; i < n; i++) {
            uint32_t literal = data[i];
            uint32_t key = code << 8 | literal;
            uint32_t h = table_hash(key);
            int found = 0;
            for (;;) {
                uint32_t t = table[h];
                if (t == 0) {
                    break;
                }
                if (t >> 12 == key) {
                    code = t & 0xFFF;
                    found = 1;
                    break;
                }
                h = (h + 1) & TABLE_MASK;
            }
            if (found) {
                continue;
            }
            /* Emit the current code; the literal starts the next one. */
            put_code(&w, code, width);
            code = literal;
            if (inc_hi(&w, &hi, &width, &overflow)) {
                table_reset();
                continue;
            }
            /* h is the empty slot the probe stopped at. */
            table[h] = key << 12 | hi;
            used[n_used++] = (uint16_t)h;
        }
        /* Close: flush the saved code, bump hi (may widen or clear), EOF. */
        put_code(&w, code, width);
        inc_hi(&w, &hi, &width, &overflow);
        put_code(&w, LZW_EOF, width);
        table_reset();
    }
    if (w.nbits > 0) {
        w.out[w.pos++] = (unsigned char)(w.bits & 0xFF);
    }
    PyBuffer_Release(&view);
    if (_PyBytes_Resize(&result, w.pos) < 0) {
        return NULL;
    }
    return result;
}

/* ---------------------------------------------------------- decompress */

static PyObject *
decode_error(const char *msg)
{
    PyErr_SetString(PyExc_ValueError, msg);
    return NULL;
}

static PyObject *
lzw_decompress(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "y*n:decompress", &view, &limit)) {
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;

    /* Code c expands to expansion(prefix[c]) + suffix[c]; length[c] and
     * first[c] (its first byte) make output and the KwKwK case O(1) to
     * size. Codes < 256 are the literals. */
    uint16_t prefix[LZW_MAX_CODE + 1];
    unsigned char suffix[LZW_MAX_CODE + 1];
    unsigned char first[LZW_MAX_CODE + 1];
    uint16_t length[LZW_MAX_CODE + 1];
    for (int i = 0; i < 256; i++) {
        suffix[i] = first[i] = (unsigned char)i;
        length[i] = 1;
    }

    /* Gossip compresses ~3:1 or less; start at 4x and double as needed,
     * never allocating past the limit. */
    Py_ssize_t cap = n < 64 ? 256 : (n > PY_SSIZE_T_MAX / 8 ? n : 4 * n);
    if (cap > limit && limit > 0) {
        cap = limit;
    }
    unsigned char *out = PyMem_Malloc((size_t)cap);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t total = 0;
    unsigned width = 9;
    uint32_t mask = 511;
    uint32_t hi = LZW_EOF;
    uint32_t overflow = 512;
    uint32_t ntab = 258; /* defined codes: len(table) in lzw.py */
    int32_t last = -1;   /* -1: no previous code (after a clear, table full) */
    uint64_t bits = 0;
    unsigned nbits = 0;
    Py_ssize_t pos = 0;
    char limit_msg[96];
    const char *err = NULL;

    for (;;) {
        while (nbits < width) {
            if (pos >= n) {
                err = "lzw: unexpected end of data (no EOF code)";
                goto fail;
            }
            bits |= (uint64_t)data[pos++] << nbits;
            nbits += 8;
        }
        uint32_t code = (uint32_t)bits & mask;
        bits >>= width;
        nbits -= width;

        unsigned char head; /* first byte of this code's expansion */
        if ((code > LZW_EOF && code < hi) || code < LZW_CLEAR) {
            head = first[code];
        }
        else if (code == LZW_CLEAR) {
            width = 9;
            mask = 511;
            hi = LZW_EOF;
            overflow = 512;
            last = -1;
            ntab = 258;
            continue;
        }
        else if (code == LZW_EOF) {
            break;
        }
        else if (code <= hi) {
            if (code == hi && last >= 0) {
                /* KwKwK: the code being defined right now, last + last[0]. */
                head = first[last];
            }
            else if (code < ntab) {
                head = first[code];
            }
            else {
                err = "lzw: invalid code";
                goto fail;
            }
        }
        else {
            err = "lzw: invalid code";
            goto fail;
        }

        /* Define the next code before expanding: in the KwKwK case it is
         * the code being expanded. */
        if (last >= 0) {
            prefix[ntab] = (uint16_t)last;
            suffix[ntab] = head;
            first[ntab] = first[last];
            length[ntab] = (uint16_t)(length[last] + 1);
            ntab++;
        }
        Py_ssize_t len = length[code];
        if (total + len > limit) {
            PyOS_snprintf(limit_msg, sizeof(limit_msg),
                          "lzw: decompressed data exceeds %zd bytes", limit);
            err = limit_msg;
            goto fail;
        }
        if (total + len > cap) {
            Py_ssize_t want = cap * 2;
            if (want < total + len) {
                want = total + len;
            }
            if (want > limit) {
                want = limit; /* never past the limit: total + len <= limit */
            }
            unsigned char *grown = PyMem_Realloc(out, (size_t)want);
            if (grown == NULL) {
                PyMem_Free(out);
                PyBuffer_Release(&view);
                return PyErr_NoMemory();
            }
            out = grown;
            cap = want;
        }
        /* Write the expansion back to front along the prefix chain. */
        uint32_t c = code;
        for (Py_ssize_t i = total + len - 1; i > total; i--) {
            out[i] = suffix[c];
            c = prefix[c];
        }
        out[total] = (unsigned char)c;
        total += len;

        last = (int32_t)code;
        hi++;
        if (hi >= overflow) {
            if (width == LZW_MAX_WIDTH) {
                /* Table full: stop defining codes until the next clear. */
                last = -1;
                hi--;
            }
            else {
                width++;
                mask = (1u << width) - 1;
                overflow <<= 1;
            }
        }
    }
    PyBuffer_Release(&view);
    PyObject *result = PyBytes_FromStringAndSize((const char *)out, total);
    PyMem_Free(out);
    return result;

fail:
    PyMem_Free(out);
    PyBuffer_Release(&view);
    return decode_error(err);
}

static PyMethodDef lzw_methods[] = {
    {"compress", lzw_compress, METH_O,
     "compress(data) -> bytes: Go compress/lzw, LSB, literal width 8."},
    {"decompress", lzw_decompress, METH_VARARGS,
     "decompress(data, limit) -> bytes; ValueError if corrupt or > limit."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef lzw_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gossip.wire._lzw",
    .m_doc = "Native LZW codec, byte-identical with gossip/wire/lzw.py (see there).",
    .m_size = -1,
    .m_methods = lzw_methods,
};

PyMODINIT_FUNC
PyInit__lzw(void)
{
    return PyModule_Create(&lzw_module);
}
