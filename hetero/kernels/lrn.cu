// Local response normalization across channels (ONNX LRN), NCHW, contiguous.
//
//   sq[n,c,h,w] = sum_{i = max(0, c - lo)}^{min(C - 1, c + hi)} x[n,i,h,w]^2,
//   lo = floor((size - 1) / 2), hi = ceil((size - 1) / 2)
//   y[n,c,h,w]  = x[n,c,h,w] / (bias + alpha / size * sq[n,c,h,w])^beta
//
// Neither cuBLAS nor the cuDNN graph API has ONNX's LRN (cuDNN's legacy LRN uses a centred
// window only for odd sizes), so it is written here. One thread per output element; each reads
// `size` neighbours along C, which are `inner` elements apart, so a warp reading consecutive w
// positions reads consecutive addresses. The base of pow is positive for bias > 0 (ONNX default
// 1.0). Compiled at run time with NVRTC (cupy.RawModule).

template <typename T>
__device__ __forceinline__ void hetero_lrn(const T* __restrict__ x, T* __restrict__ y,
                                           long long total, long long channels, long long inner,
                                           int size, T alpha, T beta, T bias) {
    int lo = (size - 1) / 2;
    int hi = size - 1 - lo;
    long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        long long c = (i / inner) % channels;
        long long base = i - c * inner;  // element (n, 0, h, w)
        long long first = c - lo < 0 ? 0 : c - lo;
        long long last = c + hi > channels - 1 ? channels - 1 : c + hi;
        T sq = 0;
        for (long long k = first; k <= last; ++k) {
            T v = x[base + k * inner];
            sq += v * v;
        }
        y[i] = x[i] / pow(bias + alpha / (T)size * sq, beta);
    }
}

extern "C" __global__ void lrn_f32(const float* __restrict__ x, float* __restrict__ y,
                                   long long total, long long channels, long long inner, int size,
                                   float alpha, float beta, float bias) {
    hetero_lrn<float>(x, y, total, channels, inner, size, alpha, beta, bias);
}

extern "C" __global__ void lrn_f64(const double* __restrict__ x, double* __restrict__ y,
                                   long long total, long long channels, long long inner, int size,
                                   double alpha, double beta, double bias) {
    hetero_lrn<double>(x, y, total, channels, inner, size, alpha, beta, bias);
}
