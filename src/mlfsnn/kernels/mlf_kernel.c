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

/* tdBN in front of the neuron (inference statistics or this batch's), per channel c:
 *     y = ((scale * (x - mean[c])) / den[c]) * gamma[c] + beta[c],   den = sqrt(var) + eps
 * in exactly the order of mlfsnn.nn.tdbn's tensor ops, so y is bit-identical to the unfused path. */
typedef struct {
    const float *mean, *den, *gamma, *beta;
    float scale;
    int64_t hw, C;
} bn_t;

/* Channel of each column of a tile: columns are (b, c, h, w) flattened, so c = (n / hw) % C. */
static void tile_channels(int32_t *chan, int64_t n0, int64_t m, const bn_t *bn) {
    for (int64_t j = 0; j < m; ++j) chan[j] = (int32_t)(((n0 + j) / bn->hw) % bn->C);
}

static float bn_z(float x, int32_t c, const bn_t *bn) {
    float v = x - bn->mean[c];
    v = bn->scale * v;
    return v / bn->den[c];
}

static void bn_row(const float *restrict x, float *restrict y, const int32_t *restrict chan, int64_t m,
                   const bn_t *bn) {
    for (int64_t j = 0; j < m; ++j) {
        int32_t c = chan[j];
        float v = bn_z(x[j], c, bn) * bn->gamma[c];
        y[j] = v + bn->beta[c];
    }
}

/* Potentials of a tile for every step into useq[T][K][m]; counts into out (may be NULL).
 * With bn, each step's input row is normalised into yrow first (chan: the tile's channels). */
static void tile_forward(const float *x, float *out, float *useq, const float *zero, float *cnt,
                         int64_t T, int64_t N, int64_t n0, int64_t m, const float *th, int K,
                         float decay, int rolling, const bn_t *bn, const int32_t *chan, float *yrow) {
    for (int64_t t = 0; t < T; ++t) {
        const float *xt = x + t * N + n0;
        if (bn) {
            bn_row(xt, yrow, chan, m, bn);
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
        int32_t *chan = bn ? (int32_t *)malloc((size_t)cols * sizeof(int32_t)) : NULL;
        if (!buf || (bn && !chan)) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (failed) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            if (bn) tile_channels(chan, n0, m, bn);
            tile_forward(x, out, buf, buf + 2 * K * cols, buf + (2 * K + 1) * cols, T, N, n0, m, th, K,
                         decay, 1, bn, chan, buf + (2 * K + 2) * cols);
        }
        free(buf);
        free(chan);
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

/* BPTT over all tiles: gx = dL/d(neuron input). With bn, also the per-channel sums sums[0][c] of gx and
 * sums[1][c] of gx * z (z: the normalised input before gamma), in double, for tdBN's backward. */
static int backward(const float *x, const float *g, float *gx, int64_t T, int64_t N, const float *th, int K,
                    float decay, float half, float inv_w, int detach_reset, const bn_t *bn, double *sums,
                    int nthreads) {
    int64_t cols = tile_cols(T, K), ntiles = (N + cols - 1) / cols;
    int64_t C = bn ? bn->C : 0;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    {
        float *useq = (float *)malloc((size_t)(T * K + K + 4) * cols * sizeof(float));
        int32_t *chan = bn ? (int32_t *)malloc((size_t)cols * sizeof(int32_t)) : NULL;
        double *part = bn ? (double *)calloc((size_t)(2 * C), sizeof(double)) : NULL;
        if (!useq || (bn && (!chan || !part))) failed = 1;
#pragma omp for schedule(static)
        for (int64_t b = 0; b < ntiles; ++b) {
            if (failed) continue;
            int64_t n0 = b * cols, m = N - n0 < cols ? N - n0 : cols;
            float *delta = useq + T * K * cols, *zero = delta + K * cols, *gs = zero + cols;
            float *yrow = gs + cols;
            memset(zero, 0, (size_t)cols * sizeof(float));
            if (bn) tile_channels(chan, n0, m, bn);
            tile_forward(x, NULL, useq, zero, gs, T, N, n0, m, th, K, decay, 0, bn, chan, yrow);
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
                if (bn) {
                    const float *xt = x + t * N + n0;
                    for (int64_t j = 0; j < m; ++j) {
                        int32_t c = chan[j];
                        part[c] += gs[j];
                        part[C + c] += (double)gs[j] * bn_z(xt[j], c, bn);
                    }
                }
            }
        }
        if (part) {
#pragma omp critical
            for (int64_t c = 0; c < 2 * C; ++c) sums[c] += part[c];
        }
        free(useq);
        free(chan);
        free(part);
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

/* Second half: dx = a[c] * (gy - b[c]) - z * d[c], in place over gy (see mlfsnn.kernels.cpu). */
void tdbn_input_grad(const float *x, float *gy, int64_t total, const float *mean, const float *den, float scale,
                     int64_t hw, int64_t C, const float *a, const float *b, const float *d, int nthreads) {
    bn_t bn = {mean, den, NULL, NULL, scale, hw, C};
    int64_t planes = total / hw;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t p = 0; p < planes; ++p) {
        int32_t c = (int32_t)(p % C);
        float ac = a[c], bc = b[c], dc = d[c];
        const float *xp = x + p * hw;
        float *gp = gy + p * hw;
        for (int64_t j = 0; j < hw; ++j) gp[j] = ac * (gp[j] - bc) - bn_z(xp[j], c, &bn) * dc;
    }
}
