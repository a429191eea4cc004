/* streamhouse._memory: buffers for the I/O paths that fill them completely anyway.
 *
 * ``bytearray(n)`` zeroes its n bytes; where the bytes are overwritten right away (a socket
 * read into a frame buffer, an O_DIRECT read of a window, a segment copied out of its ring)
 * that memset is pure cost: on the 100-byte produce path it was 5-7% of the ingest and the
 * uploader processes. This module allocates them without it.
 *
 * uninitialized_bytearray(size) -> bytearray
 *     A bytearray of ``size`` bytes whose contents are undefined (whatever the allocator
 *     returns); the caller must write every byte it lets anyone read. ``size`` must be
 *     >= 0. Raises MemoryError when the allocation fails.
 *
 * page_offset(buffer, align) -> int
 *     How many bytes from the start of the writable buffer ``buffer`` the next address that
 *     is a multiple of ``align`` (a power of two) lies: 0 .. align - 1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *uninitialized_bytearray(PyObject *self, PyObject *arg) {
    (void)self;
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_Format(PyExc_ValueError, "size must be >= 0, got %zd", size);
        return NULL;
    }
    /* With a NULL source CPython allocates size + 1 bytes and leaves them as they are. */
    return PyByteArray_FromStringAndSize(NULL, size);
}

static PyObject *page_offset(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t align;
    if (!PyArg_ParseTuple(args, "w*n", &view, &align)) {
        return NULL;
    }
    if (align <= 0 || (align & (align - 1)) != 0) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "align must be a power of two, got %zd", align);
        return NULL;
    }
    uintptr_t address = (uintptr_t)view.buf;
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t((Py_ssize_t)((-address) & (uintptr_t)(align - 1)));
}

static PyMethodDef methods[] = {
    {"uninitialized_bytearray", uninitialized_bytearray, METH_O,
     "uninitialized_bytearray(size) -> bytearray of undefined contents"},
    {"page_offset", page_offset, METH_VARARGS,
     "page_offset(buffer, align) -> bytes from the buffer's start to an aligned address"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "streamhouse._memory",
    .m_doc = "Buffers without zeroing (see streamhouse/_memory.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__memory(void) { return PyModule_Create(&module); }
