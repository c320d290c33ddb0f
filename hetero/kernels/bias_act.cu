// Fused per-channel bias + activation epilogue for NCHW tensors (and plain pointwise activations).
//
//   y[i] = act(x[i] + bias[c]),  c = (i / inner) % channels
//
// `inner` is H*W for NCHW activations (1 for a (N, C) matrix); pass bias = nullptr (0) for a plain
// activation. x and y may alias (in-place epilogue after a cuDNN convolution or a cuBLAS GEMM), so
// the pointers are not __restrict__. One grid-stride loop, one read and one write per element:
// this replaces the two or three memory passes that separate add/activation kernels would make.
// Compiled at run time with NVRTC (cupy.RawModule); no headers, only built-in math functions.
//
// Activation codes (keep in sync with hetero/backends/cupy.py: ACTIVATIONS):
//   0 identity, 1 relu, 2 leaky_relu(alpha), 3 sigmoid, 4 tanh, 5 gelu (erf form),
//   6 gelu (tanh approximation), 7 erf, 8 clip(alpha, beta)

#define HETERO_SQRT1_2 0.70710678118654752440
#define HETERO_SQRT_2_OVER_PI 0.79788456080286535588

template <typename T>
__device__ __forceinline__ T hetero_activate(T v, int act, T alpha, T beta);

template <>
__device__ __forceinline__ float hetero_activate<float>(float v, int act, float alpha, float beta) {
    switch (act) {
        case 1: return v > 0.0f ? v : 0.0f;
        case 2: return v >= 0.0f ? v : alpha * v;
        case 3: return 1.0f / (1.0f + expf(-v));
        case 4: return tanhf(v);
        case 5: return 0.5f * v * (1.0f + erff(v * (float)HETERO_SQRT1_2));
        case 6: {
            float inner = (float)HETERO_SQRT_2_OVER_PI * (v + 0.044715f * v * v * v);
            return 0.5f * v * (1.0f + tanhf(inner));
        }
        case 7: return erff(v);
        case 8: return fminf(fmaxf(v, alpha), beta);
        default: return v;
    }
}

template <>
__device__ __forceinline__ double hetero_activate<double>(double v, int act, double alpha,
                                                          double beta) {
    switch (act) {
        case 1: return v > 0.0 ? v : 0.0;
        case 2: return v >= 0.0 ? v : alpha * v;
        case 3: return 1.0 / (1.0 + exp(-v));
        case 4: return tanh(v);
        case 5: return 0.5 * v * (1.0 + erf(v * HETERO_SQRT1_2));
        case 6: {
            double inner = HETERO_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v);
            return 0.5 * v * (1.0 + tanh(inner));
        }
        case 7: return erf(v);
        case 8: return fmin(fmax(v, alpha), beta);
        default: return v;
    }
}

template <typename T>
__device__ __forceinline__ void hetero_bias_act(const T* x, const T* bias, T* y, long long total,
                                                long long channels, long long inner, int act,
                                                T alpha, T beta) {
    long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        T v = x[i];
        if (bias != 0) {
            v += bias[(i / inner) % channels];
        }
        y[i] = hetero_activate<T>(v, act, alpha, beta);
    }
}

extern "C" __global__ void bias_act_f32(const float* x, const float* bias, float* y,
                                        long long total, long long channels, long long inner,
                                        int act, float alpha, float beta) {
    hetero_bias_act<float>(x, bias, y, total, channels, inner, act, alpha, beta);
}

extern "C" __global__ void bias_act_f64(const double* x, const double* bias, double* y,
                                        long long total, long long channels, long long inner,
                                        int act, double alpha, double beta) {
    hetero_bias_act<double>(x, bias, y, total, channels, inner, act, alpha, beta);
}
