/* RoPE on the CPU (twin of kernels/rope.cu): angles in double, as on the device, and the inverse
 * frequencies with llama3 / linear scaling and per-model factors. Depends on model.h and libm. */
#include "rope.h"

#include <math.h>
#include <stdlib.h>

#include "model.h"

float *kvs_rope_freqs(const struct kvs_hparams *hp)
{
    int half = (int)hp->head_dim / 2;
    float *f = malloc((size_t)half * sizeof(float));
    if (!f) return NULL;
    for (int i = 0; i < half; i++) {
        double inv = pow((double)hp->rope_theta, -2.0 * i / (double)hp->head_dim);
        if (hp->rope_scale_factor > 0) {
            double factor = hp->rope_scale_factor;
            if (hp->rope_low_freq == 0 && hp->rope_high_freq == 0) {
                inv /= factor; /* linear */
            } else {
                double orig = hp->rope_orig_ctx ? hp->rope_orig_ctx : 8192;
                double wavelen = 2 * M_PI / inv;
                double low_wl = orig / hp->rope_low_freq, high_wl = orig / hp->rope_high_freq;
                if (wavelen < high_wl) {
                    /* high frequencies unchanged */
                } else if (wavelen > low_wl) {
                    inv /= factor;
                } else {
                    double smooth = (orig / wavelen - hp->rope_low_freq) / (hp->rope_high_freq - hp->rope_low_freq);
                    inv = (1 - smooth) * inv / factor + smooth * inv;
                }
            }
        }
        if (hp->rope_factors) inv /= hp->rope_factors[i];
        f[i] = (float)inv;
    }
    return f;
}

void kvs_cpu_rope(float *x, int n_heads, int head_dim, int32_t pos, const float *freqs, bool neox)
{
    int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        double ang = (double)pos * freqs[i];
        float c = (float)cos(ang), s = (float)sin(ang);
        for (int h = 0; h < n_heads; h++) {
            float *hx = x + (size_t)h * head_dim;
            int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            float x0 = hx[a], x1 = hx[b];
            hx[a] = x0 * c - x1 * s;
            hx[b] = x0 * s + x1 * c;
        }
    }
}

void kvs_cpu_rope_rows(float *x, int T, int n_heads, int head_dim, const int32_t *pos, const float *freqs,
                       bool neox)
{
    for (int t = 0; t < T; t++) kvs_cpu_rope(x + (size_t)t * n_heads * head_dim, n_heads, head_dim, pos[t], freqs, neox);
}
