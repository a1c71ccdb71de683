/* Hot loops of the core: the simulator's batch stepping (see simulator.py for the model)
 * and the analytic predictor (see queueing.py).
 *
 * Batch-stepping kernel of the simulator.
 *
 * The same loop as simulator._run_batches_python, in C, because the optimizer confirms its
 * candidates by simulation inside a millisecond budget. Arrays come in through the buffer
 * protocol (numpy arrays); nothing here allocates per batch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* What one run reports besides its per-batch or per-request arrays. */
typedef struct {
    Py_ssize_t batches;
    double busy;
    Py_ssize_t max_depth;
    double last_done;  /* the latest completion: the run's end */
} run_stats_t;

/* Requests per block of the real-time path's queue-length scan (see ring_loop). */
#define RING_BLOCK 16

/* Real-time serving with equal service times: the earliest-free replica is always the one
 * that started N requests ago, so a ring of the last N completions replaces the heap
 * (d_k = max(a_k, d_{k-N}) + s).
 *
 * The queue length just before dispatch i is ub(when_i) - i, ub(t) the arrivals <= t;
 * dispatches never go back in time, so ub only grows. Tracking it in the same loop (one
 * forward pointer, a data-dependent trip count per request) cost four fifths of a
 * near-capacity run in branch mispredictions. So the loop first writes the dispatch times
 * alone (no branches); then one pointer pass finds ub at the end of each RING_BLOCK block,
 * which gives each block's exact length at its last request and a bound on its others
 * (ub(end) - first index); only blocks whose bound beats the longest queue seen so far are
 * scanned request by request. The result is the same maximum as the per-request pointer.
 * Returns -1 (nothing computed) when the scan's scratch memory cannot be had. */
static int ring_loop(const double *a, Py_ssize_t n, double service, Py_ssize_t replicas,
                      double *free_at, double *dispatch_out, double *completion_out,
                      int64_t *size_out, double *latency_out, Py_ssize_t skip,
                      double *busy_out, double *last_done_out, Py_ssize_t *max_depth_out) {
    double busy = 0.0, last_done = -INFINITY;
    Py_ssize_t max_depth = 0;
    /* Dispatch times: in dispatch_out (batch route) or, on the latency route, in the
     * latency array (the warm-up's in a small buffer); turned into latencies at the end
     * with the same subtraction as ever, so latencies stay bit-identical. */
    double *head = NULL;
    Py_ssize_t blocks = (n + RING_BLOCK - 1) / RING_BLOCK;
    Py_ssize_t *ub_end = (Py_ssize_t *)malloc((size_t)(blocks > 0 ? blocks : 1) * sizeof(Py_ssize_t));
    if (dispatch_out == NULL && skip > 0) head = (double *)malloc((size_t)skip * sizeof(double));
    if (ub_end == NULL || (dispatch_out == NULL && skip > 0 && head == NULL)) {
        free(ub_end); free(head);
        return -1;
    }
#define WHEN(i) (dispatch_out != NULL ? dispatch_out[i] : ((i) < skip ? head[i] : latency_out[(i) - skip]))
    Py_ssize_t slot = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double free = free_at[slot];
        double when = a[i] > free ? a[i] : free;
        double done = when + service;
        free_at[slot] = done;
        slot = slot + 1 == replicas ? 0 : slot + 1;
        if (dispatch_out != NULL) dispatch_out[i] = when;
        else if (i < skip) head[i] = when;
        else latency_out[i - skip] = when;
        last_done = done > last_done ? done : last_done;
        busy += service; /* summed, not multiplied: bit-identical to the general path */
    }
    /* ub at each block's last dispatch: exact queue lengths there, bounds elsewhere. */
    Py_ssize_t arrived = 0;
    for (Py_ssize_t b = 0; b < blocks; b++) {
        Py_ssize_t last = (b + 1) * RING_BLOCK < n ? (b + 1) * RING_BLOCK - 1 : n - 1;
        double when = WHEN(last);
        while (arrived < n && a[arrived] <= when) arrived++;
        ub_end[b] = arrived;
        if (arrived - last > max_depth) max_depth = arrived - last;
    }
    for (Py_ssize_t b = 0; b < blocks; b++) {
        Py_ssize_t first = b * RING_BLOCK;
        if (ub_end[b] - first <= max_depth) continue;
        Py_ssize_t last = first + RING_BLOCK < n ? first + RING_BLOCK - 1 : n - 1;
        Py_ssize_t p = b > 0 ? ub_end[b - 1] : 0;
        for (Py_ssize_t i = first; i < last; i++) {
            double when = WHEN(i);
            while (p < n && a[p] <= when) p++;
            if (p - i > max_depth) max_depth = p - i;
        }
    }
#undef WHEN
    if (dispatch_out != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            completion_out[i] = dispatch_out[i] + service;
            size_out[i] = 1;
        }
    } else {
        for (Py_ssize_t i = skip; i < n; i++) latency_out[i - skip] = (latency_out[i - skip] + service) - a[i];
    }
    free(ub_end); free(head);
    *busy_out = busy; *last_done_out = last_done; *max_depth_out = max_depth;
    return 0;
}

/* The dispatch loop. Writes per-batch dispatch/completion/size when `dispatch_out` is given,
 * else each request's latency from the `skip`-th on into `latency_out` (completion of its
 * batch minus its arrival: the same subtraction request_latencies makes, so both routes give
 * bit-identical latencies). The latency route skips three per-batch arrays and a second pass
 * over them: on a million requests that was most of the confirmation's memory traffic.
 * Returns -1 (nothing computed) when memory runs out; runs without the GIL. */
static int dispatch_loop(const double *a, Py_ssize_t n, const double *s, const double *sc,
                         Py_ssize_t big_b, double delay, Py_ssize_t replicas,
                         double *dispatch_out, double *completion_out, int64_t *size_out,
                         double *latency_out, Py_ssize_t skip, run_stats_t *st) {
    /* When each replica is next free (a heap on the batch path, a ring on the real-time one). */
    double *free_at = (double *)calloc((size_t)replicas, sizeof(double));
    if (free_at == NULL) return -1;
    Py_ssize_t k = 0;
    double busy = 0.0, last_done = -INFINITY;
    Py_ssize_t max_depth = 0;
    if (big_b == 1 && sc == NULL) {
        if (ring_loop(a, n, s[1], replicas, free_at, dispatch_out, completion_out, size_out,
                      latency_out, skip, &busy, &last_done, &max_depth) < 0) {
            free(free_at);
            return -1;
        }
        k = n;
    } else {
        Py_ssize_t arrived = 0;
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
            if (dispatch_out != NULL) {
                dispatch_out[k] = when;
                completion_out[k] = done;
                size_out[k] = size;
            } else {
                for (Py_ssize_t r = i < skip ? skip : i; r < i + size; r++)
                    latency_out[r - skip] = done - a[r];
            }
            if (done > last_done) last_done = done;
            /* Dispatch times never decrease, so one forward pointer counts the arrivals so
             * far; the queue is longest just before a dispatch. */
            while (arrived < n && a[arrived] <= when) arrived++;
            if (arrived - i > max_depth) max_depth = arrived - i;
            i += size;
            k++;
        }
    }
    st->batches = k;
    st->busy = busy;
    st->max_depth = max_depth;
    st->last_done = last_done;
    free(free_at);
    return 0;
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
    Py_ssize_t capacity = out_dispatch.len / (Py_ssize_t)sizeof(double);
    run_stats_t st = {0, 0.0, 0, 0.0};
    int failed = 0;
    if (big_b < 1 || replicas < 1 || table.len / (Py_ssize_t)sizeof(double) <= big_b ||
        capacity < n || out_completion.len / (Py_ssize_t)sizeof(double) < n ||
        out_sizes.len / (Py_ssize_t)sizeof(int64_t) < n ||
        (has_scale && scale.len / (Py_ssize_t)sizeof(double) < n)) {
        PyErr_SetString(PyExc_ValueError, "run_batches: inconsistent buffer sizes or arguments");
        failed = 1;
    }
    if (!failed) {
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = dispatch_loop(a, n, (const double *)table.buf,
                               has_scale ? (const double *)scale.buf : NULL, big_b, delay,
                               replicas, (double *)out_dispatch.buf,
                               (double *)out_completion.buf, (int64_t *)out_sizes.buf, NULL, 0,
                               &st);
        Py_END_ALLOW_THREADS
        if (status < 0) { PyErr_NoMemory(); failed = 1; }
    }
    PyBuffer_Release(&arrivals); PyBuffer_Release(&table);
    PyBuffer_Release(&out_dispatch); PyBuffer_Release(&out_completion);
    PyBuffer_Release(&out_sizes);
    if (has_scale) PyBuffer_Release(&scale);
    if (failed) return NULL;
    return Py_BuildValue("ndn", st.batches, st.busy, st.max_depth);
}

static PyObject *run_latencies(PyObject *self, PyObject *args) {
    Py_buffer arrivals, table, out;
    Py_ssize_t big_b, replicas, skip;
    double delay;
    if (!PyArg_ParseTuple(args, "y*y*ndnnw*", &arrivals, &table, &big_b, &delay, &replicas,
                          &skip, &out))
        return NULL;
    Py_ssize_t n = arrivals.len / (Py_ssize_t)sizeof(double);
    run_stats_t st = {0, 0.0, 0, 0.0};
    int failed = 0;
    if (big_b < 1 || replicas < 1 || table.len / (Py_ssize_t)sizeof(double) <= big_b ||
        skip < 0 || skip > n || out.len / (Py_ssize_t)sizeof(double) != n - skip) {
        PyErr_SetString(PyExc_ValueError,
                        "run_latencies: inconsistent buffer sizes or arguments "
                        "(out must hold the requests after skip)");
        failed = 1;
    }
    if (!failed) {
        int status;
        Py_BEGIN_ALLOW_THREADS
        status = dispatch_loop((const double *)arrivals.buf, n, (const double *)table.buf, NULL,
                               big_b, delay, replicas, NULL, NULL, NULL,
                               (double *)out.buf, skip, &st);
        Py_END_ALLOW_THREADS
        if (status < 0) { PyErr_NoMemory(); failed = 1; }
    }
    PyBuffer_Release(&arrivals); PyBuffer_Release(&table); PyBuffer_Release(&out);
    if (failed) return NULL;
    return Py_BuildValue("ndnd", st.batches, st.busy, st.max_depth, st.last_done);
}


/* ---------------------------------------------------------------------------------------
 * Analytic latency predictor (the model is documented in queueing.py). Scalar per plan so a
 * single plan costs microseconds and thousands of plans a few milliseconds.
 */

typedef struct {
    const double *service;     /* [kinds * width] s(b), inf beyond a profile's largest batch */
    const double *throughput;  /* [kinds * (width - 1)] running max of b / s(b), b = 1.. */
    Py_ssize_t width;
} tables_t;

static double table_at(const tables_t *t, Py_ssize_t kind, double b) {
    const double *row = t->service + kind * t->width;
    Py_ssize_t lo = (Py_ssize_t)b;
    if (lo < 1) lo = 1;
    double frac = b - (double)lo;
    if (frac <= 0.0) return row[lo];
    return row[lo] + (row[lo + 1] - row[lo]) * frac;
}

/* Smallest real b in [1, B] with N*b/s(b) >= lambda; B when full batches cannot keep up. */
static double balance_batch(const tables_t *t, Py_ssize_t kind, double lam, double n,
                            Py_ssize_t big_b) {
    const double *thr = t->throughput + kind * (t->width - 1);
    double target = lam / n;
    Py_ssize_t lo = 0, hi = t->width - 1;
    while (lo < hi) { /* first index with thr >= target */
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (thr[mid] < target) lo = mid + 1; else hi = mid;
    }
    Py_ssize_t upper = lo + 1;
    if (upper > big_b) upper = big_b;
    Py_ssize_t lower = upper - 1 < 1 ? 1 : upper - 1;
    const double *row = t->service + kind * t->width;
    double s_low = row[lower];
    double slope = row[upper] - s_low;
    double denom = n - lam * slope;
    double exact = denom > 0.0 ? lam * (s_low - slope * (double)lower) / denom : (double)upper;
    if (exact < (double)lower) exact = (double)lower;
    if (exact > (double)upper) exact = (double)upper;
    if (exact < 1.0) exact = 1.0;
    if (exact > (double)big_b) exact = (double)big_b;
    return exact;
}

/* Batch sizes vary around their means (arrival counts are over-dispersed by the arrival CV),
 * and a request's latency includes its own batch's service time; the spread is carried as a
 * 7-point Gauss-Hermite rule over the batch size of the request's batch. */
#define NODES 7
static const double NODE_X[NODES] = {-3.7504397177257425, -2.3667594107345415,
                                     -1.1544053947399682, 0.0, 1.1544053947399682,
                                     2.3667594107345415, 3.7504397177257425};
static const double NODE_W[NODES] = {0.000548268855972218, 0.0307571239675865,
                                     0.240123178605013, 0.457142857142857,
                                     0.240123178605013, 0.0307571239675865,
                                     0.000548268855972218};

typedef struct {
    double s_idle[NODES], s_busy[NODES], span[NODES];
    double s_idle_min, s_busy_min, idle_hi, busy_hi;
    double window, idle_first, idle_power, n, backlog_mean, wait_p;
    /* Share of the waits caused by a clump rather than by load, and their wait's shape. */
    double clump_share, clump_power, clump_span, clump_over[2], clump_next;
} mixture_t;

static double idle_tail_at(const mixture_t *m, double x_idle) {
    if (x_idle < 0.0) return 1.0;
    if (x_idle >= m->window) return 0.0;
    double first = m->idle_first;
    double frac = m->window > 0.0 ? x_idle / m->window : 1.0;
    double later = m->idle_power == 1.0 ? 1.0 - frac : pow(1.0 - frac, m->idle_power);
    return first + (1.0 - first) * later;
}

/* Load-induced wait: uniform over `span` (until the next dispatch), shifted by the mean
 * backlog, or the backlog's exponential tail from the residual's mean, whichever is larger. */
static double load_tail_at(const mixture_t *m, double x_busy, double span) {
    double shifted = x_busy - m->backlog_mean;
    if (shifted < 0.0) shifted = 0.0;
    double base = 1.0 - shifted / span;
    if (base < 0.0) base = 0.0;
    double residual_tail = base;
    double excess = x_busy - span / 2.0;
    if (excess < 0.0) excess = 0.0;
    double scale = m->backlog_mean > 1e-12 ? m->backlog_mean : 1e-12;
    double backlog_tail = exp(-excess / scale);
    return residual_tail > backlog_tail ? residual_tail : backlog_tail;
}

/* Residual service seen by a clump-induced wait: the N batches in service were started by
 * the clump's own requests, the first of them S_N (a sum of N gamma gaps) before this
 * arrival; given S_N < s, P(S_N < s - x) / P(S_N < s) ~ (1 - x/s)^(N alpha), which for
 * alpha < 1 puts most of the mass near a full service. */
static double clump_residual(const mixture_t *m, double x) {
    if (x <= 0.0) return 1.0;
    return x < m->clump_span ? pow(1.0 - x / m->clump_span, m->clump_power) : 0.0;
}

/* Wait of a request that found every replica busy: with probability 1 - clump_share a
 * load-induced wait (load_tail_at), otherwise a clump-induced one, the residual above, one
 * more replica's turn (clump_next) when B more arrivals of the clump came within that
 * service, two when 2B did, and the backlog's exponential tail beyond. */
static double busy_tail_at(const mixture_t *m, double x_busy, double span) {
    if (x_busy < 0.0) return 1.0;
    double load = load_tail_at(m, x_busy, span);
    if (m->clump_share <= 0.0) return load;
    double clumped = clump_residual(m, x_busy);
    double next = m->clump_next;
    double over = m->clump_over[0] * clump_residual(m, x_busy - next);
    if (over > clumped) clumped = over;
    over = m->clump_over[1] * clump_residual(m, x_busy - 2.0 * next);
    if (over > clumped) clumped = over;
    double excess = x_busy - 2.0 * next - m->clump_span / (1.0 + m->clump_power);
    double scale = m->backlog_mean > 1e-12 ? m->backlog_mean : 1e-12;
    over = excess > 0.0 ? m->clump_over[1] * exp(-excess / scale) : m->clump_over[1];
    if (over > clumped) clumped = over;
    return (1.0 - m->clump_share) * load + m->clump_share * clumped;
}

static double mixture_tail(const mixture_t *m, double t) {
    double idle_tail = 0.0, busy_tail = 0.0;
    for (int j = 0; j < NODES; j++) {
        idle_tail += NODE_W[j] * idle_tail_at(m, t - m->s_idle[j]);
        busy_tail += NODE_W[j] * busy_tail_at(m, t - m->s_busy[j], m->span[j]);
    }
    return (1.0 - m->wait_p) * idle_tail + m->wait_p * busy_tail;
}

/* s(b) at the rule's nodes for a batch size of mean `mean` and spread `sd` seen by a request
 * (size-biased: a request is more likely to sit in a large batch), clipped to [1, B]. */
static void batch_nodes(const tables_t *t, Py_ssize_t k, double mean, double sd, double big_b,
                        double *out, double *lowest, double *highest) {
    double biased = mean + sd * sd / mean;
    *lowest = INFINITY;
    *highest = 0.0;
    for (int j = 0; j < NODES; j++) {
        double b = biased + sd * NODE_X[j];
        if (b < 1.0) b = 1.0;
        if (b > big_b) b = big_b;
        out[j] = table_at(t, k, b);
        if (out[j] < *lowest) *lowest = out[j];
        if (out[j] > *highest) *highest = out[j];
    }
}


/* Regularized lower incomplete gamma P(a, x) (series below a + 1, continued fraction above;
 * the classic Numerical Recipes scheme). */
static double gamma_p(double a, double x) {
    if (x <= 0.0) return 0.0;
    double log_prefix = a * log(x) - x - lgamma(a);
    if (x < a + 1.0) {
        double term = 1.0 / a, sum = term;
        for (int k = 1; k < 500; k++) {
            term *= x / (a + k);
            sum += term;
            if (term < sum * 1e-14) break;
        }
        return sum * exp(log_prefix);
    }
    double b = x + 1.0 - a, c = 1.0 / 1e-300, d = 1.0 / b, h = d;
    for (int k = 1; k < 500; k++) {
        double an = -k * (k - a);
        b += 2.0;
        d = an * d + b;
        if (fabs(d) < 1e-300) d = 1e-300;
        c = b + an / c;
        if (fabs(c) < 1e-300) c = 1e-300;
        d = 1.0 / d;
        double delta = d * c;
        h *= delta;
        if (fabs(delta - 1.0) < 1e-14) break;
    }
    return 1.0 - exp(log_prefix) * h;
}

/* Decay rate theta of the waiting-time tail P(W > x) ~ exp(-theta x) of a queue fed by a
 * gamma renewal process (rate lam, shape alpha = 1/c_a^2) and drained at `per_request` ms per
 * request: the positive root of theta*c = alpha*ln(1 + theta/(lam*alpha)) (Cramer-Lundberg
 * for GI/D/1). It captures both heavy traffic (theta -> 2 lam (1 - rho) / c_a^2) and clumped
 * arrivals at light load, where Kingman's formula misses the waits inside a burst. */
static double lundberg_rate(double lam, double alpha, double per_request) {
    double rho = lam * per_request;
    if (rho >= 1.0) return 0.0;
    double scale = lam * alpha;
    double theta = 2.0 * scale * (1.0 - rho);
    /* f is convex with f(0) = 0 and f'(0) < 0: move right of the root, then Newton from the
     * right converges monotonically. */
    for (int k = 0; k < 200 && theta * per_request - alpha * log1p(theta / scale) <= 0.0; k++)
        theta *= 2.0;
    for (int k = 0; k < 60; k++) {
        double f = theta * per_request - alpha * log1p(theta / scale);
        double fp = per_request - alpha / (scale + theta);
        if (fp <= 0.0) break;
        double next = theta - f / fp;
        if (!(next > 0.0) || fabs(next - theta) <= 1e-12 * theta) { theta = next > 0.0 ? next : theta; break; }
        theta = next;
    }
    return theta;
}

/* x with P(X > x) = level for X ~ Beta(2, a): the size-biased share of a cycle covered by
 * the gap, between a + 1 points placed uniformly on it, that a random instant falls into.
 * Survival (1 - x)^a (1 + a x); its logarithm is concave and decreasing, so Newton lands
 * right of the root after the first step and then converges monotonically. */
static double spacing_quantile(double a, double level, double start) {
    if (level >= 1.0) return 0.0;
    if (level <= 0.0) return 1.0;
    double target = log(level), x = start > 0.0 && start < 1.0 ? start : 1.0 / (a + 1.0);
    for (int k = 0; k < 60; k++) {
        double f = a * log1p(-x) + log1p(a * x) - target;
        double fp = -a * (a + 1.0) * x / ((1.0 - x) * (1.0 + a * x));
        double next = x - f / fp;
        if (next >= 1.0) next = 0.5 * (x + 1.0);
        if (next <= 0.0) next = 0.5 * x;
        if (fabs(next - x) <= 1e-10 * x) { x = next; break; }
        x = next;
    }
    return x;
}

/* a X -> Gamma(2) for X ~ Beta(2, a) as a grows: its quantiles y at the rule's tail levels,
 * e^-y (1 + y) = level, start Newton close to the root (x ~ y / (a + 2)). */
static const double GAMMA2_AT_NODES[NODES] = {0.013345463752757513, 0.14033393702612762,
                                              0.6068647982434232, 1.6783469900166603,
                                              3.6155613165296736, 6.762979836857604,
                                              11.891787151233691};

/* P(a request finds all N replicas busy) at light load with a batching delay, from the
 * chain of batches that causes it. A replica that finds the queue empty starts its batch at
 * the next arrival and dispatches it a window w later on the timer; a request waits when
 * the N batches before it started, each at least w after the previous (earlier arrivals
 * joined it), and it arrived at least w after the last, all within w + s of the first: N
 * intervals w + Z_i with sum Z_i < u = s - (N-1) w. Z is the time from w to the next
 * arrival, P(Z < z) = (G(w+z) - G(w)) / (1 - G(w)) with G the gap CDF (any number of
 * arrivals may join within w). For bursty traffic this is far below P(S_N*clump < s), which
 * lets the window's arrivals count towards the N (bench s2026-005: 4% against 0.8% in the
 * simulator). The N-fold sum uses the local power law F(z) ~ z^beta near u:
 * P(sum < u) = F(u)^N Gamma(beta+1)^N / Gamma(N beta+1); at w = 0 this is the light-load
 * form of the gamma CDF the heavy-traffic formula uses. The arrivals the waiting request's
 * clump brings within its own window wait with it. */
static double timer_chain_wait(double lam, double alpha, double w, double s, double n,
                               double clump) {
    double u = s - (n - 1.0) * w;
    if (u <= 0.0) return 0.0;
    double scale = lam * alpha;
    double g_w = gamma_p(alpha, scale * w);
    if (g_w >= 1.0) return 1.0;
    double f_u = (gamma_p(alpha, scale * (w + u)) - g_w) / (1.0 - g_w);
    double f_half = (gamma_p(alpha, scale * (w + 0.5 * u)) - g_w) / (1.0 - g_w);
    if (!(f_u > 0.0) || !(f_half > 0.0)) return 0.0;
    double beta = log(f_u / f_half) / log(2.0);
    if (beta < 1e-6) beta = 1e-6;
    double log_p = n * (log(f_u) + lgamma(beta + 1.0)) - lgamma(n * beta + 1.0);
    double p = clump * exp(log_p);
    return p < 1.0 ? p : 1.0;
}

#define CLUMP_TERMS 64

/* s(b) at the rule's nodes for an idle replica's batch K, from its tail P(K > k) = over[k]
 * (k = 1..terms, 0 beyond, K <= B) as a request sees it: size-biased, P_sb(K > k) =
 * sum_{j > k} j P(K = j) / E[K]; each node takes the (linearly smoothed) quantile of its
 * normal tail level. */
static void idle_nodes_from_counts(const tables_t *t, Py_ssize_t k, const double *over,
                                   int terms, double mean, double big_b, double *out,
                                   double *lowest, double *highest) {
    double sb_over[CLUMP_TERMS + 2]; /* P_sb(K > k), k = 0..terms+1 */
    sb_over[terms + 1] = 0.0;
    for (int j = terms + 1; j >= 1; j--) {
        double above = j - 1 >= 1 ? over[j - 1] : 1.0;   /* P(K > j-1) */
        double at_or_above = j <= terms ? over[j] : 0.0; /* P(K > j) */
        double p_j = above - at_or_above;
        if (p_j < 0.0) p_j = 0.0;
        sb_over[j - 1] = sb_over[j] + j * p_j / mean;
    }
    *lowest = INFINITY;
    *highest = 0.0;
    for (int n = 0; n < NODES; n++) {
        double level = 0.5 * erfc(NODE_X[n] * 0.7071067811865476);
        int j = 1;
        while (j <= terms + 1 && sb_over[j] > level) j++;
        double hi = sb_over[j - 1], lo = sb_over[j];
        double b = hi > lo ? (double)j - (level - lo) / (hi - lo) : (double)j;
        if (b < 1.0) b = 1.0;
        if (b > big_b) b = big_b;
        out[n] = table_at(t, k, b);
        if (out[n] < *lowest) *lowest = out[n];
        if (out[n] > *highest) *highest = out[n];
    }
}

#define QUANTILE_STEPS 36

typedef struct {
    mixture_t m;
    double capacity, util, mean, batch;
} plan_model_t;

/* Everything about one plan that does not depend on the latency level asked for. */
/* The renewal sum over an idle replica's window (dozens to hundreds of incomplete gammas for
 * bursty traffic, most of a plan's cost) depends on (rate, CV, B, window) only. Screens score
 * each (B, T) at several replica counts: a ladder in one call, then one count per bisection
 * step, each step a separate call. So the sums are kept per thread (no locks; the kernel
 * runs without the GIL) in a direct-mapped table keyed by the exact inputs: a hit copies the
 * very numbers the loop would compute, a collision only costs the recomputation. */
#define CLUMP_MEMO_SLOTS 256 /* a power of two; about 140 KiB per thread */
typedef struct {
    int valid;
    double lam, alpha, window;
    int64_t b_int;
    double clump;
    int count_terms;
    double count_over[CLUMP_TERMS + 1];
} clump_memo_t;

static _Thread_local clump_memo_t clump_memo[CLUMP_MEMO_SLOTS];

static clump_memo_t *clump_slot(double lam, double alpha, double window, int64_t b_int) {
    const uint64_t mix = 0x9E3779B97F4A7C15ULL;
    uint64_t h = (uint64_t)b_int * mix, bits;
    memcpy(&bits, &lam, sizeof bits);
    h = (h ^ bits) * mix;
    memcpy(&bits, &alpha, sizeof bits);
    h = (h ^ bits) * mix;
    memcpy(&bits, &window, sizeof bits);
    h = (h ^ bits) * mix;
    return &clump_memo[h >> 56 & (CLUMP_MEMO_SLOTS - 1)];
}

static void model_plan(const tables_t *t, Py_ssize_t k, int64_t b_int, double delay,
                       int64_t n_int, double lam, double cv2, plan_model_t *out) {
    double big_b = (double)b_int, n = (double)n_int;
    double capacity = n * big_b / t->service[k * t->width + b_int];
    double window = (big_b - 1.0) / lam;
    if (delay < window) window = delay;
    double b_idle = 1.0 + lam * window;
    if (b_idle > big_b) b_idle = big_b;
    double b_balance = balance_batch(t, k, lam, n, b_int);
    double b_busy = b_balance;
    if (b_busy < b_idle) b_busy = b_idle;
    if (b_busy > big_b) b_busy = big_b;
    double s_busy = table_at(t, k, b_busy);
    /* A request waits when it finds all N replicas busy. With deterministic service a
     * replica is busy exactly while its batch, started within the last s, runs, so all are
     * busy when the last N arrivals came within one service: P(sum of N inter-arrival gaps
     * < s_busy), gaps gamma with shape 1/c_a^2 (Erlang for Poisson, clumps for bursty
     * traffic). This beats the M/M/N closed forms for deterministic service (M/D/N p99 was
     * +25%) and catches the waits inside bursts at light load (bursty N=1 was -72%). */
    double alpha = cv2 > 1e-12 ? 1.0 / cv2 : 0.0;
    double wait_p, wait_shape = 0.0;
    /* Arrivals an idle replica's batch gathers: K = 1 + N(w), P(K > k) = P(S_k <= w). */
    double count_over[CLUMP_TERMS + 1] = {0.0};
    int count_terms = -1;
    double idle_count_mean = b_idle;
    if (alpha == 0.0 || alpha > 1e6) wait_p = n / lam < s_busy ? 1.0 : 0.0; /* even gaps */
    else {
        /* With a batching delay, a clump of arrivals within the window leaves as one batch, so
         * keeping N replicas busy takes N clumps: the arrivals a batch gathers after its first
         * request, given that one just arrived, are the renewal function M(w) = sum_k
         * P(S_k <= w), which for bursty traffic far exceeds lambda * w. */
        double clump = 1.0;
        clump_memo_t *memo = clump_slot(lam, alpha, window, b_int);
        if (memo->valid && memo->lam == lam && memo->alpha == alpha && memo->window == window &&
            memo->b_int == b_int) {
            /* The same (B, window) at another replica count: the sum does not depend on N. */
            clump = memo->clump;
            count_terms = memo->count_terms;
            memcpy(count_over, memo->count_over, sizeof(count_over));
        } else {
            int j = 1;
            for (; j < (int)big_b; j++) {
                double term = gamma_p(j * alpha, lam * alpha * window);
                if (j <= CLUMP_TERMS) count_over[j] = term;
                clump += term;
                if (term < 1e-4) { j++; break; }
            }
            count_terms = j - 1; /* P(K > k) known for k = 1..count_terms, 0 beyond */
            if (clump > big_b) clump = big_b;
            memo->valid = 1; memo->lam = lam; memo->alpha = alpha;
            memo->window = window; memo->b_int = b_int;
            memo->clump = clump; memo->count_terms = count_terms;
            memcpy(memo->count_over, count_over, sizeof(count_over));
        }
        idle_count_mean = clump;
        wait_shape = n * clump * alpha;
        wait_p = gamma_p(wait_shape, lam * alpha * s_busy);
        if (window > 0.0) {
            double chained = timer_chain_wait(lam, alpha, window, s_busy, n, clump);
            if (chained < wait_p) {
                /* It needs every one of the N batches to have left on its timer; a clump
                 * that fills B leaves at once and the next can start right behind it. */
                double timer = 1.0 - gamma_p((big_b - 1.0) * alpha, lam * alpha * window);
                double all_timer = pow(timer, n);
                wait_p = (1.0 - all_timer) * wait_p + all_timer * chained;
            }
        }
    }
    if (wait_p > 1.0) wait_p = 1.0;
    mixture_t *m = &out->m;
    m->window = window; m->n = n; m->wait_p = wait_p;
    m->idle_first = 1.0 / b_idle;
    m->idle_power = 1.0;
    /* Without a batching delay, bursty arrivals (alpha < 1) find a replica busy far more
     * often than Poisson arrivals at the same rate would: the next arrival comes within one
     * service of the last with probability G(s) = P(gap < s) instead of 1 - exp(-lambda s).
     * That excess share of the waits, 1 - (1 - exp(-lambda s)) / G(s), is caused by clumps,
     * and their wait has another shape (see busy_tail_at). The share is a property of the
     * traffic at the scale of one service, not of N, so that adding replicas, which lowers
     * wait_p, never moves waits from the load-induced shape to the longer clump one. */
    m->clump_share = 0.0;
    m->clump_power = wait_shape;
    m->clump_span = s_busy;
    m->clump_over[0] = m->clump_over[1] = 0.0;
    m->clump_next = t->service[k * t->width + b_int] / n;
    if (window <= 0.0 && alpha > 0.0 && alpha < 1.0 && wait_p > 0.0) {
        double next_within = gamma_p(alpha, lam * alpha * s_busy);
        double poisson_within = -expm1(-lam * s_busy);
        if (poisson_within < next_within) {
            m->clump_share = 1.0 - poisson_within / next_within;
            /* B more arrivals within that service overflow the next batch: they wait for
             * one more replica to free, a full batch later on one replica. */
            for (int j = 0; j < 2; j++)
                m->clump_over[j] =
                    gamma_p(wait_shape + (j + 1) * big_b * alpha, lam * alpha * s_busy) / wait_p;
        }
    }
    /* Counts of a renewal process over a window have variance ~ mean * c_a^2. */
    double arrival_cv = sqrt(cv2);
    double s_idle_max;
    if (window > 0.0 && alpha > 0.0 && alpha < 1.0 && count_terms >= 1 &&
        count_terms <= CLUMP_TERMS) {
        /* Bursty arrivals: a batch started by an idle replica holds a whole clump, whose
         * size K has a long right tail (mostly 1, sometimes many) that a normal spread around
         * 1 + lambda*w misses (p99 -45% at B=16, T=16.5, N=3, c_a=2). The nodes sit at the
         * rule's tail levels of K as a request sees it (size-biased), from the exact counts.
         * Its clump came within a short time of the first request, so a later member waits
         * nearly the whole window too: (1 - x/w)^alpha, like the residual of a service. */
        idle_nodes_from_counts(t, k, count_over, count_terms, idle_count_mean, big_b,
                               m->s_idle, &m->s_idle_min, &s_idle_max);
        m->idle_first = 1.0 / idle_count_mean;
        m->idle_power = alpha;
    } else {
        batch_nodes(t, k, b_idle, arrival_cv * sqrt(b_idle - 1.0), big_b, m->s_idle,
                    &m->s_idle_min, &s_idle_max);
    }
    double busy_mean = 0.0;    /* E[s(b) + span/2] over the busy nodes */
    double busy_service = 0.0; /* E[s(b)] over them */
    double s_busy_top = 0.0;   /* largest s(b) among them */
    if (delay <= 0.0 && b_int >= 2 && n_int >= 2) {
        /* Without a batching delay a replica that frees takes everything queued, i.e. the
         * arrivals since the previous dispatch by any replica, so a long gap between
         * dispatches makes a large batch and a long service. For s'(b) > 0 this pushes the
         * replicas' phases apart instead of settling them into an even stagger (a replica
         * that fell behind takes more and falls further behind), and the dispatch epochs
         * end up at effectively random phases of the cycle s_busy: the gaps between them
         * are uniform spacings, Beta(1, N-1) * s_busy, and the gap a request falls into is
         * size-biased, Beta(2, N-1) * s_busy. Its batch is the arrivals of that gap and its
         * wait is uniform over it. (The even stagger under-predicted p99 by 25-65% at
         * N = 2..10, s(b) = 10.7 + 0.185 b.) The rule's nodes are placed at the normal
         * tail levels of the Gauss-Hermite points mapped onto that gap distribution. */
        /* That drift apart is driven by rho' = lambda s'(b), the extra service a longer gap
         * buys. Against it, replicas that find the queue empty idle and then take
         * consecutive arrivals, which stacks them together: with a flat profile (rho' -> 0)
         * they dispatch as one cluster and a request waits up to a whole cycle (p99 about
         * 2 s at N = 10, s(b) = 29 + 0.1 b). Only a share min(1, rho') of the replicas
         * spreads out: the spacings are taken over 1 + (N-1) min(1, rho') points. */
        double b_hi = b_busy + 1.0 <= big_b ? b_busy + 1.0 : big_b;
        double b_lo = b_hi - 1.0 >= 1.0 ? b_hi - 1.0 : 1.0;
        double drift = b_hi > b_lo ? lam * (table_at(t, k, b_hi) - table_at(t, k, b_lo)) : 0.0;
        if (drift > 1.0) drift = 1.0;
        if (drift < 0.0) drift = 0.0;
        double spread = (n - 1.0) * drift; /* a in Beta(2, a) */
        m->s_busy_min = INFINITY;
        m->busy_hi = 0.0;
        for (int j = 0; j < NODES; j++) {
            double level = 0.5 * erfc(NODE_X[j] * 0.7071067811865476);
            double gap = spread > 1e-9 ? s_busy * spacing_quantile(spread, level,
                                                                   GAMMA2_AT_NODES[j] /
                                                                       (spread + 2.0))
                                       : s_busy;
            /* Its own arrival plus the others of the gap; a request sees a count of a
             * renewal process size-biased, about lambda*gap + c_a^2. */
            double b = lam * gap + cv2;
            if (b < 1.0) b = 1.0;
            if (b > big_b) b = big_b;
            m->s_busy[j] = table_at(t, k, b);
            m->span[j] = gap > 1e-12 ? gap : 1e-12;
            if (m->s_busy[j] < m->s_busy_min) m->s_busy_min = m->s_busy[j];
            if (m->s_busy[j] + m->span[j] > m->busy_hi) m->busy_hi = m->s_busy[j] + m->span[j];
            busy_mean += NODE_W[j] * (m->s_busy[j] + gap / 2.0);
            busy_service += NODE_W[j] * m->s_busy[j];
            if (m->s_busy[j] > s_busy_top) s_busy_top = m->s_busy[j];
        }
    } else {
        /* A queued request waits for the next of N busy replicas to free. With a batching
         * delay (or single requests) busy replicas settle into an even stagger, one freeing
         * every s_busy/N, so the wait is about uniform over that gap (independent uniform
         * residuals overstated it: p99 +25% at N = 7). The timer does not add to it: by the
         * time a replica frees, the queue's oldest request has usually waited longer than T. */
        double s_busy_max;
        /* The batch a waiting request leaves in gathers the arrivals of about one stagger
         * gap, lambda s / N; below one (light load) it is mostly the request alone, so the
         * count is taken from that mean rather than from the batch floor of 1, which made
         * every waiting request's batch twice as large. */
        double gathered = b_busy;
        if (b_balance <= 1.0 && lam * s_busy / n < 1.0)
            gathered = lam * s_busy / n;
        batch_nodes(t, k, gathered, arrival_cv * sqrt(gathered), big_b, m->s_busy,
                    &m->s_busy_min, &s_busy_max);
        for (int j = 0; j < NODES; j++) m->span[j] = s_busy / n;
        m->busy_hi = s_busy_max + s_busy / n;
        /* The mean over the same size-biased batch nodes as the tail. */
        for (int j = 0; j < NODES; j++) busy_service += NODE_W[j] * m->s_busy[j];
        busy_mean = busy_service + s_busy / n / 2.0;
        s_busy_top = s_busy_max;
    }
    m->idle_hi = s_idle_max + window;
    if (m->clump_share > 0.0) { /* the quantile search must bracket the clump's waits too */
        double clump_hi = s_busy_top + m->clump_span + 2.0 * m->clump_next;
        if (m->busy_hi < clump_hi) m->busy_hi = clump_hi;
    }
    /* A backlog drains in full batches, at capacity; a clump smaller than B leaves in one
     * batch, whose longer service the batch-size nodes above already carry. */
    double theta = alpha > 0.0 ? lundberg_rate(lam, alpha, 1.0 / capacity) : 0.0;
    m->backlog_mean = theta > 0.0 ? 1.0 / theta : 0.0;
    out->capacity = capacity;
    out->util = lam / capacity;
    double idle_wait_mean =
        window * m->idle_first + (1.0 - m->idle_first) * window / (1.0 + m->idle_power);
    double clump_wait = m->clump_span / (1.0 + m->clump_power) +
                        (m->clump_over[0] + m->clump_over[1]) * m->clump_next;
    double idle_service = 0.0;
    for (int j = 0; j < NODES; j++) idle_service += NODE_W[j] * m->s_idle[j];
    out->mean = (1.0 - wait_p) * (idle_service + idle_wait_mean) +
                wait_p * ((1.0 - m->clump_share) * (busy_mean + m->backlog_mean) +
                          m->clump_share * (busy_service + clump_wait));
    out->batch = 1.0 / ((1.0 - wait_p) / idle_count_mean + wait_p / b_busy);
}

static double mixture_quantile(const mixture_t *m, double q) {
    double level = 1.0 - q;
    double lo = m->s_idle_min < m->s_busy_min ? m->s_idle_min : m->s_busy_min;
    double hi = (m->idle_hi > m->busy_hi ? m->idle_hi : m->busy_hi) +
                m->backlog_mean * (log(1.0 / level) + 1.0) + 1e-9;
    for (int step = 0; step < QUANTILE_STEPS; step++) {
        double mid = 0.5 * (lo + hi);
        if (mixture_tail(m, mid) > level) lo = mid; else hi = mid;
    }
    return hi;
}

/* Shared argument handling of predict_plans and tail_at. */
typedef struct {
    Py_buffer service, throughput, kind, b, t, n, levels, out0, out1, out2, out3;
    Py_ssize_t width, plans, nlevels;
    double rate_per_s, arrival_cv;
} plan_args_t;

static void release_args(plan_args_t *a) {
    PyBuffer_Release(&a->service); PyBuffer_Release(&a->throughput); PyBuffer_Release(&a->kind);
    PyBuffer_Release(&a->b); PyBuffer_Release(&a->t); PyBuffer_Release(&a->n);
    PyBuffer_Release(&a->levels); PyBuffer_Release(&a->out0); PyBuffer_Release(&a->out1);
    PyBuffer_Release(&a->out2); PyBuffer_Release(&a->out3);
}

static int parse_plan_args(PyObject *args, plan_args_t *a) {
    if (!PyArg_ParseTuple(args, "y*y*ny*y*y*y*ddy*w*w*w*w*", &a->service, &a->throughput,
                          &a->width, &a->kind, &a->b, &a->t, &a->n, &a->rate_per_s,
                          &a->arrival_cv, &a->levels, &a->out0, &a->out1, &a->out2, &a->out3))
        return 0;
    Py_ssize_t d = (Py_ssize_t)sizeof(double), w = a->width;
    a->plans = a->kind.len / (Py_ssize_t)sizeof(int64_t);
    a->nlevels = a->levels.len / d;
    Py_ssize_t kinds = w > 0 ? a->service.len / d / w : 0;
    int ok = w >= 3 && kinds >= 1 && a->throughput.len / d == kinds * (w - 1) &&
             a->b.len / (Py_ssize_t)sizeof(int64_t) == a->plans &&
             a->t.len / d == a->plans && a->n.len / (Py_ssize_t)sizeof(int64_t) == a->plans &&
             a->out0.len / d == a->plans * a->nlevels && a->out1.len / d == a->plans &&
             a->out2.len / d == a->plans && a->out3.len / d == a->plans &&
             a->rate_per_s > 0.0 && a->arrival_cv >= 0.0;
    const int64_t *kind = (const int64_t *)a->kind.buf, *bs = (const int64_t *)a->b.buf;
    const int64_t *ns = (const int64_t *)a->n.buf;
    for (Py_ssize_t i = 0; ok && i < a->plans; i++)
        ok = kind[i] >= 0 && kind[i] < kinds && bs[i] >= 1 && bs[i] < w - 1 && ns[i] >= 1;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "inconsistent buffer sizes or arguments");
        release_args(a);
    }
    return ok;
}

/* Latency at each quantile level (out0[plans*levels]), mean (out1), mean batch (out2),
 * utilisation (out3). Unstable plans get inf latencies. */
static PyObject *predict_plans(PyObject *self, PyObject *args) {
    plan_args_t a;
    if (!parse_plan_args(args, &a)) return NULL;
    tables_t t = {(const double *)a.service.buf, (const double *)a.throughput.buf, a.width};
    const int64_t *kind = (const int64_t *)a.kind.buf, *bs = (const int64_t *)a.b.buf;
    const int64_t *ns = (const int64_t *)a.n.buf;
    const double *delays = (const double *)a.t.buf, *qs = (const double *)a.levels.buf;
    double *latency = (double *)a.out0.buf, *mean = (double *)a.out1.buf;
    double *batch = (double *)a.out2.buf, *util = (double *)a.out3.buf;
    double lam = a.rate_per_s / 1000.0, cv2 = a.arrival_cv * a.arrival_cv;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < a.plans; i++) {
        plan_model_t pm;
        model_plan(&t, (Py_ssize_t)kind[i], bs[i], delays[i], ns[i], lam, cv2, &pm);
        int stable = pm.util < 1.0;
        for (Py_ssize_t j = 0; j < a.nlevels; j++)
            latency[i * a.nlevels + j] = stable ? mixture_quantile(&pm.m, qs[j]) : INFINITY;
        mean[i] = stable ? pm.mean : INFINITY;
        batch[i] = pm.batch;
        util[i] = pm.util;
    }
    Py_END_ALLOW_THREADS
    release_args(&a);
    Py_RETURN_NONE;
}

/* P(latency > threshold_ms) per plan (out0[plans]; levels holds the one threshold), 1 for
 * unstable plans; the other outputs as in predict_plans. One tail evaluation instead of a
 * quantile search: what a yes/no "meets the SLO" screen needs. */
static PyObject *tail_at(PyObject *self, PyObject *args) {
    plan_args_t a;
    if (!parse_plan_args(args, &a)) return NULL;
    if (a.nlevels != 1) {
        release_args(&a);
        PyErr_SetString(PyExc_ValueError, "tail_at takes exactly one threshold");
        return NULL;
    }
    tables_t t = {(const double *)a.service.buf, (const double *)a.throughput.buf, a.width};
    const int64_t *kind = (const int64_t *)a.kind.buf, *bs = (const int64_t *)a.b.buf;
    const int64_t *ns = (const int64_t *)a.n.buf;
    const double *delays = (const double *)a.t.buf;
    double threshold = ((const double *)a.levels.buf)[0];
    double *tail = (double *)a.out0.buf, *mean = (double *)a.out1.buf;
    double *batch = (double *)a.out2.buf, *util = (double *)a.out3.buf;
    double lam = a.rate_per_s / 1000.0, cv2 = a.arrival_cv * a.arrival_cv;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < a.plans; i++) {
        plan_model_t pm;
        model_plan(&t, (Py_ssize_t)kind[i], bs[i], delays[i], ns[i], lam, cv2, &pm);
        int stable = pm.util < 1.0;
        tail[i] = stable ? mixture_tail(&pm.m, threshold) : 1.0;
        mean[i] = stable ? pm.mean : INFINITY;
        batch[i] = pm.batch;
        util[i] = pm.util;
    }
    Py_END_ALLOW_THREADS
    release_args(&a);
    Py_RETURN_NONE;
}


/* ---------------------------------------------------------------------------------------
 * Order statistics. numpy's partition degrades badly on arrays with many equal values (a
 * lightly loaded deterministic system gives thousands of identical latencies: 2.5 ms for
 * 19k values instead of 0.2 ms), so ranks are selected here with three-way quickselect,
 * linear whatever the duplicates.
 */

static void swap_d(double *a, Py_ssize_t i, Py_ssize_t j) {
    double t = a[i]; a[i] = a[j]; a[j] = t;
}

/* Rearranges a[lo..hi] so that a[rank] holds the value of that rank, smaller values before
 * it and larger after (like numpy's partition). */
static void select_rank(double *a, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t rank,
                        uint64_t *state) {
    while (lo < hi) {
        /* xorshift pivot choice: no adversarial input can force quadratic time */
        *state ^= *state << 13; *state ^= *state >> 7; *state ^= *state << 17;
        double pivot = a[lo + (Py_ssize_t)(*state % (uint64_t)(hi - lo + 1))];
        Py_ssize_t lt = lo, i = lo, gt = hi;
        while (i <= gt) {
            if (a[i] < pivot) swap_d(a, lt++, i++);
            else if (a[i] > pivot) swap_d(a, i, gt--);
            else i++;
        }
        if (rank < lt) hi = lt - 1;
        else if (rank > gt) lo = gt + 1;
        else return;
    }
}

/* Several ranks of a large array in about one read-only pass: a random sample brackets each
 * rank between two sample values; one pass counts the values below each bracket and copies
 * those inside it (a few hundredths of the array) aside, where quickselect finishes. Quickselect
 * over the whole array costs 2-3.4 passes of swaps per rank region; this is the difference
 * between ~10 ms and ~3 ms for the six percentiles of a million latencies. Returns 0 when a
 * bracket missed its rank (unlucky sample, p ~ 1e-4) or memory ran out: the caller then falls
 * back to quickselect, so results never depend on the sample. */
#define BRACKET_MIN_N 8192
#define BRACKET_SIGMAS 4.0

/* A bracket's values equal to either bound are counted, not copied: a lightly loaded
 * deterministic system puts nearly every latency on one value, and copying (then selecting
 * among) a million equal values cost more than the whole simulation. */
typedef struct {
    double lo, hi; double *buf; Py_ssize_t len, cap, below, at_lo, at_hi;
} bracket_t;

static int bracket_push(bracket_t *b, double x) {
    if (b->len == b->cap) {
        Py_ssize_t cap = b->cap ? 2 * b->cap : 1024;
        double *grown = (double *)realloc(b->buf, (size_t)cap * sizeof(double));
        if (!grown) return 0;
        b->buf = grown; b->cap = cap;
    }
    b->buf[b->len++] = x;
    return 1;
}

static uint64_t xorshift(uint64_t *state) {
    *state ^= *state << 13; *state ^= *state >> 7; *state ^= *state << 17;
    return *state;
}

/* The counting pass for up to FAST_GROUPS disjoint, ascending brackets. Below a bracket is
 * counted as n minus the values at or above its lower bound: compares and adds on pairs of
 * values (GCC vector extensions: SSE2 on x86-64), no branch, where the general loop's first
 * test (below the first bracket?) is a coin toss for a median and cost a misprediction on
 * every other value of a million. Only values inside a bracket (a few hundredths) take a
 * branch. Same counts and copies as the general loop. */
#define FAST_GROUPS 8
typedef double v2d __attribute__((vector_size(16)));
typedef int64_t v2i __attribute__((vector_size(16)));

static int bracket_take(bracket_t *g, Py_ssize_t groups, double x) {
    Py_ssize_t k = 0;
    while (k < groups && !(x >= g[k].lo && x <= g[k].hi)) k++;
    if (k == groups) return 1;  /* the other value of an inside pair */
    if (x == g[k].lo) g[k].at_lo++;
    else if (x == g[k].hi) g[k].at_hi++;
    else return bracket_push(&g[k], x);
    return 1;
}

/* Inlined for each bracket count, so the lanes loop unrolls over the brackets in use only. */
static inline __attribute__((always_inline)) int count_brackets_lanes(
    const double *a, Py_ssize_t n, bracket_t *g, Py_ssize_t groups, const Py_ssize_t lanes) {
    v2d lo[FAST_GROUPS], hi[FAST_GROUPS];
    v2i ge[FAST_GROUPS];
    for (Py_ssize_t k = 0; k < FAST_GROUPS; k++) {
        /* unused lanes: nothing is at or above +inf's lower bound, nothing inside */
        double l = k < groups ? g[k].lo : INFINITY, h = k < groups ? g[k].hi : -INFINITY;
        lo[k] = (v2d){l, l};
        hi[k] = (v2d){h, h};
        ge[k] = (v2i){0, 0};
    }
    Py_ssize_t pairs = n / 2;
    for (Py_ssize_t i = 0; i < pairs; i++) {
        v2d x;
        memcpy(&x, a + 2 * i, sizeof x);
        v2i inside = {0, 0};
#pragma GCC unroll 8
        for (Py_ssize_t k = 0; k < lanes; k++) {
            v2i at = (v2i)(x >= lo[k]);
            ge[k] -= at;
            inside |= at & (v2i)(x <= hi[k]);
        }
        if (inside[0] | inside[1]) {
            if (!bracket_take(g, groups, x[0]) || !bracket_take(g, groups, x[1])) return 0;
        }
    }
    Py_ssize_t counted[FAST_GROUPS];
    for (Py_ssize_t k = 0; k < FAST_GROUPS; k++) counted[k] = (Py_ssize_t)(ge[k][0] + ge[k][1]);
    if (n % 2) {
        double x = a[n - 1];
        for (Py_ssize_t k = 0; k < groups; k++) counted[k] += x >= g[k].lo;
        if (!bracket_take(g, groups, x)) return 0;
    }
    for (Py_ssize_t k = 0; k < groups; k++) g[k].below = n - counted[k];
    return 1;
}

static int count_brackets_fast(const double *a, Py_ssize_t n, bracket_t *g, Py_ssize_t groups) {
    switch (groups) {
    case 1: return count_brackets_lanes(a, n, g, groups, 1);
    case 2: return count_brackets_lanes(a, n, g, groups, 2);
    case 3: return count_brackets_lanes(a, n, g, groups, 3);
    case 4: return count_brackets_lanes(a, n, g, groups, 4);
    case 5: return count_brackets_lanes(a, n, g, groups, 5);
    case 6: return count_brackets_lanes(a, n, g, groups, 6);
    default: return count_brackets_lanes(a, n, g, groups, FAST_GROUPS);
    }
}

static int select_bracketed(const double *a, Py_ssize_t n, const int64_t *r, Py_ssize_t m,
                            double *o, uint64_t *state) {
    Py_ssize_t samples = (Py_ssize_t)(4.0 * pow((double)n, 2.0 / 3.0));
    if (samples > n / 4) samples = n / 4;
    double *sample = (double *)malloc((size_t)samples * sizeof(double));
    bracket_t *g = (bracket_t *)calloc((size_t)m, sizeof(bracket_t));
    Py_ssize_t *group_of = (Py_ssize_t *)malloc((size_t)m * sizeof(Py_ssize_t));
    int ok = sample && g && group_of;
    Py_ssize_t groups = 0;
    if (ok) {
        /* One random value from each of `samples` equal strides: the same kind of sample
         * for bracketing, but read front to back (uniform positions over a million values
         * missed the cache on nearly every read: most of the selection's time). */
        Py_ssize_t stride = n / samples;
        for (Py_ssize_t i = 0; i < samples; i++) {
            uint64_t offset = (uint64_t)(((unsigned __int128)xorshift(state) * (uint64_t)stride) >> 64);
            sample[i] = a[i * stride + (Py_ssize_t)offset];
        }
        /* Both bounds of every rank, as sample indices (-1: none below, samples: none
         * above), selected in ascending order so each selection starts past the last. */
        Py_ssize_t *index = (Py_ssize_t *)malloc((size_t)(2 * m) * sizeof(Py_ssize_t));
        double *value = (double *)malloc((size_t)(2 * m) * sizeof(double));
        Py_ssize_t *order = (Py_ssize_t *)malloc((size_t)(2 * m) * sizeof(Py_ssize_t));
        ok = index && value && order;
        for (Py_ssize_t j = 0; ok && j < m; j++) {
            double q = ((double)r[j] + 0.5) / (double)n;
            double at = q * (double)samples;
            double spread = BRACKET_SIGMAS * sqrt(q * (1.0 - q) * (double)samples) + 2.0;
            Py_ssize_t lo_i = (Py_ssize_t)floor(at - spread), hi_i = (Py_ssize_t)ceil(at + spread);
            index[2 * j] = lo_i < 0 ? -1 : lo_i;
            index[2 * j + 1] = hi_i >= samples ? samples : hi_i;
        }
        for (Py_ssize_t k = 0; ok && k < 2 * m; k++) {  /* insertion sort: 2m is tiny */
            Py_ssize_t t = k;
            while (t > 0 && index[order[t - 1]] > index[k]) { order[t] = order[t - 1]; t--; }
            order[t] = k;
        }
        Py_ssize_t from = 0;
        for (Py_ssize_t k = 0; ok && k < 2 * m; k++) {
            Py_ssize_t at = index[order[k]];
            if (at < 0) { value[order[k]] = -INFINITY; continue; }
            if (at >= samples) { value[order[k]] = INFINITY; continue; }
            select_rank(sample, from, samples - 1, at, state);
            value[order[k]] = sample[at];
            from = at;
        }
        for (Py_ssize_t j = 0; ok && j < m; j++) {
            double lo = value[2 * j], hi = value[2 * j + 1];
            if (lo > hi) lo = hi;
            if (groups > 0 && lo <= g[groups - 1].hi) {
                if (hi > g[groups - 1].hi) g[groups - 1].hi = hi;
            } else {
                g[groups].lo = lo; g[groups].hi = hi; groups++;
            }
            group_of[j] = groups - 1;
        }
        free(index); free(value); free(order);
    }
    if (ok) {
        if (groups <= FAST_GROUPS) {
            ok = count_brackets_fast(a, n, g, groups);
        } else {
            Py_ssize_t below_first = 0;
            Py_ssize_t *gap = (Py_ssize_t *)calloc((size_t)groups, sizeof(Py_ssize_t));
            ok = gap != NULL;
            for (Py_ssize_t i = 0; ok && i < n; i++) {
                double x = a[i];
                if (x < g[0].lo) { below_first++; continue; }
                for (Py_ssize_t k = 0; k < groups; k++) {
                    if (x <= g[k].hi) {
                        if (x == g[k].lo) g[k].at_lo++;
                        else if (x == g[k].hi) g[k].at_hi++;
                        else ok = bracket_push(&g[k], x);
                        break;
                    }
                    if (k + 1 == groups || x < g[k + 1].lo) { gap[k]++; break; }
                }
            }
            Py_ssize_t below = below_first;
            for (Py_ssize_t k = 0; ok && k < groups; k++) {
                g[k].below = below;
                below += g[k].at_lo + g[k].len + g[k].at_hi + gap[k];
            }
            free(gap);
        }
        for (Py_ssize_t j = 0; ok && j < m; j++) {
            bracket_t *b = &g[group_of[j]];
            Py_ssize_t local = (Py_ssize_t)r[j] - b->below;
            ok = local >= 0 && local < b->at_lo + b->len + b->at_hi;
            if (!ok) break;
            if (local < b->at_lo) {
                o[j] = b->lo;
            } else if (local - b->at_lo < b->len) {
                local -= b->at_lo;
                select_rank(b->buf, 0, b->len - 1, local, state);
                o[j] = b->buf[local];
            } else {
                o[j] = b->hi;
            }
        }
    }
    for (Py_ssize_t k = 0; g && k < groups; k++) free(g[k].buf);
    free(sample); free(g); free(group_of);
    return ok;
}

static PyObject *select_ranks(PyObject *self, PyObject *args) {
    Py_buffer work, ranks, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &work, &ranks, &out)) return NULL;
    Py_ssize_t n = work.len / (Py_ssize_t)sizeof(double);
    Py_ssize_t m = ranks.len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *r = (const int64_t *)ranks.buf;
    int ok = out.len / (Py_ssize_t)sizeof(double) == m;
    for (Py_ssize_t j = 0; ok && j < m; j++)
        ok = r[j] >= 0 && r[j] < n && (j == 0 || r[j] >= r[j - 1]);
    if (!ok) {
        PyBuffer_Release(&work); PyBuffer_Release(&ranks); PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError, "select_ranks: ranks must be sorted and in range");
        return NULL;
    }
    const double *a = (const double *)work.buf;
    double *o = (double *)out.buf;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    uint64_t state = 0x9E3779B97F4A7C15ULL;
    if (m > 0 && (n < BRACKET_MIN_N || !select_bracketed(a, n, r, m, o, &state))) {
        /* quickselect rearranges, so it works on a copy: the input stays untouched */
        double *copy = (double *)malloc((size_t)n * sizeof(double));
        if (copy) {
            memcpy(copy, a, (size_t)n * sizeof(double));
            Py_ssize_t lo = 0;
            for (Py_ssize_t j = 0; j < m; j++) {
                /* ranks ascend, so each search starts past the previous rank */
                select_rank(copy, lo, n - 1, (Py_ssize_t)r[j], &state);
                o[j] = copy[r[j]];
                lo = (Py_ssize_t)r[j];
            }
            free(copy);
        } else {
            failed = 1;
        }
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyBuffer_Release(&work); PyBuffer_Release(&ranks); PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    PyBuffer_Release(&work); PyBuffer_Release(&ranks); PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* Per-request latencies from batch completions: request i of batch j waited until
 * completion[j]. Requests before `skip` (the warm-up) are left out. One pass, no temporaries
 * (numpy's repeat-then-subtract writes and reads two 8-byte arrays per request). */
static PyObject *request_latencies(PyObject *self, PyObject *args) {
    Py_buffer arrivals, completion, sizes, out;
    Py_ssize_t skip;
    if (!PyArg_ParseTuple(args, "y*y*y*nw*", &arrivals, &completion, &sizes, &skip, &out))
        return NULL;
    Py_ssize_t n = arrivals.len / (Py_ssize_t)sizeof(double);
    Py_ssize_t batches = completion.len / (Py_ssize_t)sizeof(double);
    const double *a = (const double *)arrivals.buf, *c = (const double *)completion.buf;
    const int64_t *z = (const int64_t *)sizes.buf;
    double *o = (double *)out.buf;
    Py_ssize_t total = 0;
    int ok = sizes.len / (Py_ssize_t)sizeof(int64_t) == batches && skip >= 0 && skip <= n;
    for (Py_ssize_t j = 0; ok && j < batches; j++) {
        ok = z[j] > 0;
        total += z[j];
    }
    ok = ok && total == n && out.len / (Py_ssize_t)sizeof(double) == n - skip;
    if (!ok) {
        PyBuffer_Release(&arrivals); PyBuffer_Release(&completion);
        PyBuffer_Release(&sizes); PyBuffer_Release(&out);
        PyErr_SetString(PyExc_ValueError,
                        "request_latencies: sizes must be positive and sum to the arrivals, "
                        "out must hold the requests after skip");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    Py_ssize_t i = 0;
    for (Py_ssize_t j = 0; j < batches; j++) {
        Py_ssize_t end = i + (Py_ssize_t)z[j];
        double done = c[j];
        if (end <= skip) { i = end; continue; }
        for (Py_ssize_t k = i < skip ? skip : i; k < end; k++) o[k - skip] = done - a[k];
        i = end;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&arrivals); PyBuffer_Release(&completion);
    PyBuffer_Release(&sizes); PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

/* One run of the optimizer's search, reduced in C to the two figures the search reads: the
 * latency of one rank (the SLO percentile) and the count of requests slower than the SLO
 * bound in each of `chunks` equal consecutive chunks (the batch means of its confidence
 * test; requests past chunks * (kept / chunks) are not counted, and with fewer kept
 * requests than chunks the total goes in counts[0]). The latencies live in a scratch
 * buffer selected in place: a search simulates a dozen or more plans on 12-24k requests,
 * and per plan the numpy passes and array handling cost as much as the simulation. */
static PyObject *search_run(PyObject *self, PyObject *args) {
    Py_buffer arrivals, table, counts;
    Py_ssize_t big_b, replicas, skip, rank, chunks;
    double delay, bound;
    if (!PyArg_ParseTuple(args, "y*y*ndnnndnw*", &arrivals, &table, &big_b, &delay, &replicas,
                          &skip, &rank, &bound, &chunks, &counts))
        return NULL;
    Py_ssize_t n = arrivals.len / (Py_ssize_t)sizeof(double);
    Py_ssize_t kept = n - skip;
    double *latency = NULL;
    int failed = 0;
    double value = 0.0;
    if (big_b < 1 || replicas < 1 || table.len / (Py_ssize_t)sizeof(double) <= big_b ||
        skip < 0 || kept < 1 || rank < 0 || rank >= kept || chunks < 1 ||
        counts.len / (Py_ssize_t)sizeof(int64_t) != chunks) {
        PyErr_SetString(PyExc_ValueError,
                        "search_run: inconsistent buffer sizes or arguments (0 <= rank < "
                        "n - skip, counts must hold `chunks` int64)");
        failed = 1;
    } else {
        latency = (double *)malloc((size_t)kept * sizeof(double));
        if (latency == NULL) { PyErr_NoMemory(); failed = 1; }
    }
    if (!failed) {
        int64_t *c = (int64_t *)counts.buf;
        int status;
        Py_BEGIN_ALLOW_THREADS
        run_stats_t st = {0, 0.0, 0, 0.0};
        status = dispatch_loop((const double *)arrivals.buf, n, (const double *)table.buf, NULL,
                               big_b, delay, replicas, NULL, NULL, NULL, latency, skip,
                               &st);
        if (status == 0) {
            for (Py_ssize_t k = 0; k < chunks; k++) c[k] = 0;
            Py_ssize_t per_chunk = kept / chunks;
            if (per_chunk == 0) {
                for (Py_ssize_t i = 0; i < kept; i++) c[0] += latency[i] > bound;
            } else {
                for (Py_ssize_t k = 0; k < chunks; k++) {
                    int64_t slow = 0;
                    const double *chunk = latency + k * per_chunk;
                    for (Py_ssize_t i = 0; i < per_chunk; i++) slow += chunk[i] > bound;
                    c[k] = slow;
                }
            }
            uint64_t state = 0x9E3779B97F4A7C15ULL;
            int64_t wanted = (int64_t)rank;
            if (kept < BRACKET_MIN_N || !select_bracketed(latency, kept, &wanted, 1, &value, &state)) {
                select_rank(latency, 0, kept - 1, rank, &state);  /* our own buffer: in place */
                value = latency[rank];
            }
        }
        Py_END_ALLOW_THREADS
        if (status < 0) { PyErr_NoMemory(); failed = 1; }
    }
    free(latency);
    PyBuffer_Release(&arrivals); PyBuffer_Release(&table); PyBuffer_Release(&counts);
    if (failed) return NULL;
    return PyFloat_FromDouble(value);
}

static PyMethodDef methods[] = {
    {"run_batches", run_batches, METH_VARARGS,
     "run_batches(arrivals, table, B, T, N, scale_or_None, out_dispatch, out_completion, "
     "out_sizes) -> (num_batches, busy_ms, max_queue_length)"},
    {"run_latencies", run_latencies, METH_VARARGS,
     "run_latencies(arrivals, table, B, T, N, skip, out[n - skip]) -> (num_batches, busy_ms, "
     "max_queue_length, last_completion_ms)"},
    {"predict_plans", predict_plans, METH_VARARGS,
     "predict_plans(service, throughput, width, kind, B, T, N, rate_per_s, arrival_cv, "
     "quantiles, out_latency[plans*levels], out_mean, out_batch, out_util) -> None"},
    {"tail_at", tail_at, METH_VARARGS,
     "tail_at(service, throughput, width, kind, B, T, N, rate_per_s, arrival_cv, "
     "[threshold_ms], out_tail, out_mean, out_batch, out_util) -> None"},
    {"request_latencies", request_latencies, METH_VARARGS,
     "request_latencies(arrivals, completion, sizes, skip, out[n - skip]) -> None"},
    {"search_run", search_run, METH_VARARGS,
     "search_run(arrivals, table, B, T, N, skip, rank, bound_ms, chunks, out_counts[chunks]) "
     "-> latency of the rank among the requests after skip"},
    {"select_ranks", select_ranks, METH_VARARGS,
     "select_ranks(values (not modified), sorted ranks int64, out) -> None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_batchsim", NULL, -1, methods};

PyMODINIT_FUNC PyInit__batchsim(void) { return PyModule_Create(&module); }
