/* Fused MLF forward/backward over [T, N] fp32 (see mlfsnn/kernels/cpu.py for how it is built).
 * Float order matches the PyTorch reference exactly: build with -ffp-contract=off. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Columns per tile: backward keeps a tile's potentials for all T steps and K levels in cache. */
static int64_t tile_cols(int64_t T, int K) {
    int64_t c = T * K > 0 ? (int64_t)65536 / (T * (int64_t)K) : 256;
    c = c / 16 * 16;
    return c < 16 ? 16 : (c > 256 ? 256 : c);
}

/* One step of one level over m columns; same float order as the reference. */
static void level_step(float *restrict u, const float *restrict up, const float *restrict xt,
                       float *restrict cnt, int64_t m, float th, float decay) {
    for (int64_t j = 0; j < m; ++j) {
        float keep = up[j] > th ? 0.0f : 1.0f;
        float v = decay * up[j];
        v = v * keep;
        v = v + xt[j];
        u[j] = v;
        cnt[j] += v > th ? 1.0f : 0.0f;
    }
}

/* tdBN in front of the neuron (inference statistics or this batch's), per channel c:
 *     y = ((scale * (x - mean[c])) / den[c]) * gamma[c] + beta[c],   den = sqrt(var) + eps
 * in exactly the order of mlfsnn.nn.tdbn's tensor ops, so y is bit-identical to the unfused path. */
typedef struct {
    const float *mean, *den, *gamma, *beta;
    float scale;
    int64_t hw, C;
} bn_t;

/* Columns [n0, n0 + m) split into runs of one channel: calls body(j, run, c) for each. Within a run
 * the channel's constants are scalars, so the inner loops vectorise. */
#define FOR_CHANNEL_RUNS(bn, n0, m, body)                                   \
    for (int64_t j_ = 0; j_ < (m);) {                                       \
        int64_t p_ = (n0) + j_, c_ = (p_ / (bn)->hw) % (bn)->C;             \
        int64_t run_ = (bn)->hw - p_ % (bn)->hw;                            \
        if (run_ > (m) - j_) run_ = (m) - j_;                               \
        body(j_, run_, c_);                                                 \
        j_ += run_;                                                         \
    }

static void bn_run(const float *restrict x, float *restrict y, int64_t run, const bn_t *bn, int64_t c) {
    float mu = bn->mean[c], dn = bn->den[c], g = bn->gamma[c], b = bn->beta[c], s = bn->scale;
    for (int64_t k = 0; k < run; ++k) {
        float v = x[k] - mu;
        v = s * v;
        v = v / dn; /* a true division, as tdBN's: the forward must round exactly like it */
        v = v * g;
        y[k] = v + b;
    }
}

static void bn_row(const float *x, float *y, int64_t n0, int64_t m, const bn_t *bn) {
#define BN_ROW_RUN(j, run, c) bn_run(x + (j), y + (j), run, bn, c)
    FOR_CHANNEL_RUNS(bn, n0, m, BN_ROW_RUN)
#undef BN_ROW_RUN
}

/* Per-channel sums of gy and gy * z over one run (z by reciprocal: gradients need not be bit-exact). */
static void bn_grad_sums(const float *restrict x, const float *restrict gy, int64_t run, const bn_t *bn,
                         int64_t c, double *part) {
    float mu = bn->mean[c], inv = 1.0f / bn->den[c], s = bn->scale;
    float a1[16] = {0}, a2[16] = {0};
    int64_t k = 0;
    for (; k + 16 <= run; k += 16)
        for (int l = 0; l < 16; ++l) {
            a1[l] += gy[k + l];
            a2[l] += gy[k + l] * ((s * (x[k + l] - mu)) * inv);
        }
    double s1 = 0.0, s2 = 0.0;
    for (int l = 0; l < 16; ++l) {
        s1 += a1[l];
        s2 += a2[l];
    }
    for (; k < run; ++k) {
        s1 += gy[k];
        s2 += (double)gy[k] * ((s * (x[k] - mu)) * inv);
    }
    part[c] += s1;
    part[bn->C + c] += s2;
}

/* Potentials of a tile for every step into useq[T][K][m]; counts into out (may be NULL).
 * With bn, each step's input row is normalised into yrow first. */
static void tile_forward(const float *x, float *out, float *useq, const float *zero, float *cnt,
                         int64_t T, int64_t N, int64_t n0, int64_t m, const float *th, int K,
                         float decay, int rolling, const bn_t *bn, float *yrow) {
    for (int64_t t = 0; t < T; ++t) {
        const float *xt = x + t * N + n0;
        if (bn) {
            bn_row(xt, yrow, n0, m, bn);
            xt = yrow;
        }
        memset(cnt, 0, (size_t)m * sizeof(float));
        for (int k = 0; k < K; ++k) {
            /* rolling: only two steps are kept (forward only); else the full sequence (backward). */
            int64_t cur = rolling ? (t & 1) : t, prev = rolling ? ((t + 1) & 1) : t - 1;
            float *u = useq + (cur * K + k) * m;
            const float *up = t == 0 ? zero : useq + (prev * K + k) * m;
            level_step(u, up, xt, cnt, m, th[k], decay);
        }
        if (out) memcpy(out + t * N + n0, cnt, (size_t)m * sizeof(float));
    }
}

static int forward(const float *x, float *out, int64_t T, int64_t N, const float *th, int K, float decay,
                   const bn_t *bn, int nthreads) {
    int64_t cols = 256, ntiles = (N + cols - 1) / cols;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *buf = (float *)calloc((size_t)(2 * K + 3) * cols, sizeof(float));
        if (!buf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (failed) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            tile_forward(x, out, buf, buf + 2 * K * cols, buf + (2 * K + 1) * cols, T, N, n0, m, th, K,
                         decay, 1, bn, buf + (2 * K + 2) * cols);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

int mlf_forward(const float *x, float *out, int64_t T, int64_t N, const float *th, int K,
                float decay, int nthreads) {
    return forward(x, out, T, N, th, K, decay, NULL, nthreads);
}

int tdbn_mlf_forward(const float *x, float *out, int64_t T, int64_t N, const float *th, int K, float decay,
                     const float *mean, const float *den, const float *gamma, const float *beta, float scale,
                     int64_t hw, int64_t C, int nthreads) {
    bn_t bn = {mean, den, gamma, beta, scale, hw, C};
    return forward(x, out, T, N, th, K, decay, &bn, nthreads);
}

/* One step of BPTT for one level over m columns:
 * dL/do = g - decay*u*delta (the reset path, unless detached); delta = h*dL/do + decay*(1-o)*delta. */
static inline void bptt_level(const float *restrict u, float *restrict d, const float *restrict gt,
                              float *restrict gs, int64_t m, float thk, float decay, float half, float inv_w,
                              const int detach) {
    for (int64_t j = 0; j < m; ++j) {
        /* Comparisons as 0/1 factors (exact: x * 1 = x, x * 0 = 0 for finite x), so the loop is
         * branch-free; with ternaries GCC keeps control flow and leaves it scalar. */
        float h = (float)(fabsf(u[j] - thk) < half) * inv_w;
        float keep = 1.0f - (float)(u[j] > thk);
        float d_o = detach ? gt[j] : gt[j] - decay * u[j] * d[j];
        float nd = d_o * h + decay * keep * d[j];
        d[j] = nd;
        gs[j] += nd;
    }
}

/* BPTT over all tiles: gx = dL/d(neuron input). With bn, also the per-channel sums sums[0][c] of gx and
 * sums[1][c] of gx * z (z: the normalised input before gamma), in double, for tdBN's backward. */
static int backward(const float *x, const float *g, float *gx, int64_t T, int64_t N, const float *th, int K,
                    float decay, float half, float inv_w, int detach_reset, const bn_t *bn, double *sums,
                    int nthreads) {
    int64_t cols = tile_cols(T, K), ntiles = (N + cols - 1) / cols;
    int64_t C = bn ? bn->C : 0;
    int failed = 0;
    /* One row of partial sums per thread, added in thread order afterwards: with the static schedule
     * every rerun sums in the same order, so trainer.deterministic reruns stay bit-identical. */
    double *parts = bn ? (double *)calloc((size_t)(nthreads * 2 * C), sizeof(double)) : NULL;
    if (bn && !parts) return -1;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *useq = (float *)malloc((size_t)(T * K + K + 4) * cols * sizeof(float));
        double *part = parts ? parts + (int64_t)thread_id() * 2 * C : NULL;
        if (!useq) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (failed) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            float *delta = useq + T * K * cols, *zero = delta + K * cols, *gs = zero + cols;
            float *yrow = gs + cols;
            memset(zero, 0, (size_t)cols * sizeof(float));
            tile_forward(x, NULL, useq, zero, gs, T, N, n0, m, th, K, decay, 0, bn, yrow);
            memset(delta, 0, (size_t)K * m * sizeof(float));
            for (int64_t t = T - 1; t >= 0; --t) {
                const float *gt = g + t * N + n0;
                memset(gs, 0, (size_t)m * sizeof(float));
                for (int k = 0; k < K; ++k) {
                    const float *u = useq + (t * K + k) * m;
                    float *d = delta + k * m;
                    /* Two call sites with a constant flag: each inlined copy is branch-free and vectorises. */
                    if (detach_reset)
                        bptt_level(u, d, gt, gs, m, th[k], decay, half, inv_w, 1);
                    else
                        bptt_level(u, d, gt, gs, m, th[k], decay, half, inv_w, 0);
                }
                memcpy(gx + t * N + n0, gs, (size_t)m * sizeof(float));
                if (bn) {
                    const float *xt = x + t * N + n0;
#define BN_SUMS_RUN(j, run, c) bn_grad_sums(xt + (j), gs + (j), run, bn, c, part)
                    FOR_CHANNEL_RUNS(bn, n0, m, BN_SUMS_RUN)
#undef BN_SUMS_RUN
                }
            }
        }
        free(useq);
    }
    if (parts) {
        for (int i = 0; i < nthreads; ++i)
            for (int64_t c = 0; c < 2 * C; ++c) sums[c] += parts[(int64_t)i * 2 * C + c];
        free(parts);
    }
    return failed ? -1 : 0;
}

int mlf_backward(const float *x, const float *g, float *gx, int64_t T, int64_t N, const float *th,
                 int K, float decay, float half, float inv_w, int detach_reset, int nthreads) {
    return backward(x, g, gx, T, N, th, K, decay, half, inv_w, detach_reset, NULL, NULL, nthreads);
}

/* First half of tdBN + MLF backward: gy = dL/dy into gy, and sums (2 x C doubles, zeroed by the caller). */
int tdbn_mlf_backward(const float *x, const float *g, float *gy, int64_t T, int64_t N, const float *th, int K,
                      float decay, float half, float inv_w, int detach_reset, const float *mean, const float *den,
                      const float *gamma, const float *beta, float scale, int64_t hw, int64_t C, double *sums,
                      int nthreads) {
    bn_t bn = {mean, den, gamma, beta, scale, hw, C};
    return backward(x, g, gy, T, N, th, K, decay, half, inv_w, detach_reset, &bn, sums, nthreads);
}

/* Second half: dx = a[c] * (gy - b[c]) - z * d[c], in place over gy (see mlfsnn.kernels.ops). */
void tdbn_input_grad(const float *x, float *gy, int64_t total, const float *mean, const float *den, float scale,
                     int64_t hw, int64_t C, const float *a, const float *b, const float *d, int nthreads) {
    int64_t planes = total / hw;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
        int64_t c = p % C;
        float ac = a[c], bc = b[c], dc = d[c], mu = mean[c], inv = 1.0f / den[c];
        const float *restrict xp = x + p * hw;
        float *restrict gp = gy + p * hw;
        for (int64_t j = 0; j < hw; ++j) gp[j] = ac * (gp[j] - bc) - ((scale * (xp[j] - mu)) * inv) * dc;
    }
}
