/* Fused MLF forward/backward over [T, N] fp32 (see mlfsnn/kernels/cpu.py for how it is built).
 * Float order matches the PyTorch reference exactly: build with -ffp-contract=off. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* Potentials of a tile for every step into useq[T][K][m]; counts into out (may be NULL). */
static void tile_forward(const float *x, float *out, float *useq, const float *zero, float *cnt,
                         int64_t T, int64_t N, int64_t n0, int64_t m, const float *th, int K,
                         float decay, int rolling) {
    for (int64_t t = 0; t < T; ++t) {
        memset(cnt, 0, (size_t)m * sizeof(float));
        for (int k = 0; k < K; ++k) {
            /* rolling: only two steps are kept (forward only); else the full sequence (backward). */
            int64_t cur = rolling ? (t & 1) : t, prev = rolling ? ((t + 1) & 1) : t - 1;
            float *u = useq + (cur * K + k) * m;
            const float *up = t == 0 ? zero : useq + (prev * K + k) * m;
            level_step(u, up, x + t * N + n0, cnt, m, th[k], decay);
        }
        if (out) memcpy(out + t * N + n0, cnt, (size_t)m * sizeof(float));
    }
}

int mlf_forward(const float *x, float *out, int64_t T, int64_t N, const float *th, int K,
                float decay, int nthreads) {
    int64_t cols = 256, ntiles = (N + cols - 1) / cols;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *buf = (float *)calloc((size_t)(2 * K + 2) * cols, sizeof(float));
        if (!buf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (!buf) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            tile_forward(x, out, buf, buf + 2 * K * cols, buf + (2 * K + 1) * cols, T, N, n0, m, th, K,
                         decay, 1);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

int mlf_backward(const float *x, const float *g, float *gx, int64_t T, int64_t N, const float *th,
                 int K, float decay, float half, float inv_w, int detach_reset, int nthreads) {
    int64_t cols = tile_cols(T, K), ntiles = (N + cols - 1) / cols;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *useq = (float *)malloc((size_t)(T * K + K + 3) * cols * sizeof(float));
        if (!useq) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (!useq) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            float *delta = useq + T * K * cols, *zero = delta + K * cols, *gs = zero + cols;
            memset(zero, 0, (size_t)cols * sizeof(float));
            tile_forward(x, NULL, useq, zero, gs, T, N, n0, m, th, K, decay, 0);
            memset(delta, 0, (size_t)K * m * sizeof(float));
            for (int64_t t = T - 1; t >= 0; --t) {
                const float *gt = g + t * N + n0;
                memset(gs, 0, (size_t)m * sizeof(float));
                for (int k = 0; k < K; ++k) {
                    const float *restrict u = useq + (t * K + k) * m;
                    float *restrict d = delta + k * m;
                    float thk = th[k];
                    /* dL/do = g - decay*u*delta (reset path); delta = h*dL/do + decay*(1-o)*delta */
                    for (int64_t j = 0; j < m; ++j) {
                        float h = fabsf(u[j] - thk) < half ? inv_w : 0.0f;
                        float keep = u[j] > thk ? 0.0f : 1.0f;
                        float d_o = detach_reset ? gt[j] : gt[j] - decay * u[j] * d[j];
                        float nd = d_o * h + decay * keep * d[j];
                        d[j] = nd;
                        gs[j] += nd;
                    }
                }
                memcpy(gx + t * N + n0, gs, (size_t)m * sizeof(float));
            }
        }
        free(useq);
    }
    return failed ? -1 : 0;
}
