/* Batch-stepping kernel of the simulator (see simulator.py for the model).
 *
 * The same loop as simulator._run_batches_python, in C, because the optimizer confirms its
 * candidates by simulation inside a millisecond budget. Arrays come in through the buffer
 * protocol (numpy arrays); nothing here allocates per batch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

static void sift_down(double *heap, Py_ssize_t n, Py_ssize_t i) {
    double value = heap[i];
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && heap[child + 1] < heap[child]) child++;
        if (heap[child] >= value) break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = value;
}

/* First index in [lo, hi) whose arrival is > t (bisect_right). */
static Py_ssize_t upper_bound(const double *a, Py_ssize_t lo, Py_ssize_t hi, double t) {
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (a[mid] <= t) lo = mid + 1; else hi = mid;
    }
    return lo;
}

static PyObject *run_batches(PyObject *self, PyObject *args) {
    Py_buffer arrivals, table, scale, out_dispatch, out_completion, out_sizes;
    Py_ssize_t big_b, replicas;
    double delay;
    PyObject *scale_obj;
    if (!PyArg_ParseTuple(args, "y*y*ndnOw*w*w*", &arrivals, &table, &big_b, &delay, &replicas,
                          &scale_obj, &out_dispatch, &out_completion, &out_sizes))
        return NULL;
    int has_scale = scale_obj != Py_None;
    if (has_scale && PyObject_GetBuffer(scale_obj, &scale, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&arrivals); PyBuffer_Release(&table);
        PyBuffer_Release(&out_dispatch); PyBuffer_Release(&out_completion);
        PyBuffer_Release(&out_sizes);
        return NULL;
    }
    const double *a = (const double *)arrivals.buf;
    Py_ssize_t n = arrivals.len / (Py_ssize_t)sizeof(double);
    const double *s = (const double *)table.buf;
    const double *sc = has_scale ? (const double *)scale.buf : NULL;
    double *dispatch_out = (double *)out_dispatch.buf;
    double *completion_out = (double *)out_completion.buf;
    int64_t *size_out = (int64_t *)out_sizes.buf;
    Py_ssize_t capacity = out_dispatch.len / (Py_ssize_t)sizeof(double);
    double *free_at = NULL;
    Py_ssize_t k = 0;
    double busy = 0.0;
    int failed = 0;
    if (big_b < 1 || replicas < 1 || table.len / (Py_ssize_t)sizeof(double) <= big_b ||
        capacity < n || out_completion.len / (Py_ssize_t)sizeof(double) < n ||
        out_sizes.len / (Py_ssize_t)sizeof(int64_t) < n ||
        (has_scale && scale.len / (Py_ssize_t)sizeof(double) < n)) {
        PyErr_SetString(PyExc_ValueError, "run_batches: inconsistent buffer sizes or arguments");
        failed = 1;
    } else {
        free_at = (double *)calloc((size_t)replicas, sizeof(double));
        if (free_at == NULL) { PyErr_NoMemory(); failed = 1; }
    }
    if (!failed) {
        Py_BEGIN_ALLOW_THREADS
        Py_ssize_t i = 0;
        while (i < n) {
            double first = a[i];
            double start = free_at[0] > first ? free_at[0] : first;
            Py_ssize_t last = i + big_b - 1;
            double when;
            Py_ssize_t size;
            if (last < n && a[last] <= start) {
                when = start;
                size = big_b;
            } else {
                double deadline = first + delay;
                if (last < n && a[last] <= deadline) {
                    when = a[last];
                    size = big_b;
                } else {
                    when = deadline > start ? deadline : start;
                    size = upper_bound(a, i, last < n ? last : n, when) - i;
                }
            }
            double service = s[size];
            if (sc != NULL) service *= sc[k];
            double done = when + service;
            free_at[0] = done;
            sift_down(free_at, replicas, 0);
            busy += service;
            dispatch_out[k] = when;
            completion_out[k] = done;
            size_out[k] = size;
            i += size;
            k++;
        }
        Py_END_ALLOW_THREADS
    }
    free(free_at);
    PyBuffer_Release(&arrivals); PyBuffer_Release(&table);
    PyBuffer_Release(&out_dispatch); PyBuffer_Release(&out_completion);
    PyBuffer_Release(&out_sizes);
    if (has_scale) PyBuffer_Release(&scale);
    if (failed) return NULL;
    return Py_BuildValue("nd", k, busy);
}

static PyMethodDef methods[] = {
    {"run_batches", run_batches, METH_VARARGS,
     "run_batches(arrivals, table, B, T, N, scale_or_None, out_dispatch, out_completion, "
     "out_sizes) -> (num_batches, busy_ms)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batchsim", NULL, -1, methods};

PyMODINIT_FUNC PyInit__batchsim(void) { return PyModule_Create(&module); }
