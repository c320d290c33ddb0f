// 2-D max and average pooling of a contiguous NCHW array (ONNX MaxPool / AveragePool).
//
// For output (n, c, oy, ox) the window's taps sit at input rows iy = oy*sh + a*dh - pad_top and
// columns ix = ox*sw + b*dw - pad_left (a < kh, b < kw). Taps outside the input are skipped (max
// pooling pads with -inf, average pooling with zeros). The average divides by
//   mode 1 (count_include_pad = 0): the number of taps inside the input;
//   mode 2 (count_include_pad = 1): the number of taps inside the explicitly padded input
//          (iy < H + pad_bottom and ix < W + pad_right), so the part of a ceil_mode window that
//          runs past the padding never counts.
// mode 0 is max pooling. One thread per output element; consecutive threads take consecutive ox,
// so their reads of one input row are close together. Pooling is memory-bound: this reads each
// input element about kh*kw/(sh*sw) times from cache and writes each output once, where the
// shared array-namespace kernel makes kh*kw full passes over the output.
// Compiled at run time with NVRTC (cupy.RawModule).

template <typename T>
__device__ __forceinline__ T hetero_pool_neg_inf();

template <>
__device__ __forceinline__ float hetero_pool_neg_inf<float>() {
    return __int_as_float(0xff800000);
}

template <>
__device__ __forceinline__ double hetero_pool_neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}

template <typename T>
__device__ __forceinline__ void hetero_pool2d(const T* __restrict__ x, T* __restrict__ y,
                                              long long total, int h, int w, int oh, int ow,
                                              int kh, int kw, int sh, int sw, int dh, int dw,
                                              int pad_top, int pad_left, int pad_bottom,
                                              int pad_right, int mode) {
    long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        int ox = (int)(i % ow);
        int oy = (int)((i / ow) % oh);
        long long plane = i / ((long long)ow * oh);
        const T* xp = x + plane * (long long)h * w;
        T acc = mode == 0 ? hetero_pool_neg_inf<T>() : (T)0;
        int count = 0;
        for (int a = 0; a < kh; ++a) {
            int iy = oy * sh + a * dh - pad_top;
            for (int b = 0; b < kw; ++b) {
                int ix = ox * sw + b * dw - pad_left;
                bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
                if (mode == 2) {
                    count += (iy < h + pad_bottom && ix < w + pad_right) ? 1 : 0;
                } else if (mode == 1 && inside) {
                    count += 1;
                }
                if (inside) {
                    T v = xp[(long long)iy * w + ix];
                    acc = mode == 0 ? (v > acc ? v : acc) : acc + v;
                }
            }
        }
        y[i] = mode == 0 ? acc : acc / (T)(count > 0 ? count : 1);
    }
}

extern "C" __global__ void pool2d_f32(const float* __restrict__ x, float* __restrict__ y,
                                      long long total, int h, int w, int oh, int ow, int kh,
                                      int kw, int sh, int sw, int dh, int dw, int pad_top,
                                      int pad_left, int pad_bottom, int pad_right, int mode) {
    hetero_pool2d<float>(x, y, total, h, w, oh, ow, kh, kw, sh, sw, dh, dw, pad_top, pad_left,
                         pad_bottom, pad_right, mode);
}

extern "C" __global__ void pool2d_f64(const double* __restrict__ x, double* __restrict__ y,
                                      long long total, int h, int w, int oh, int ow, int kh,
                                      int kw, int sh, int sw, int dh, int dw, int pad_top,
                                      int pad_left, int pad_bottom, int pad_right, int mode) {
    hetero_pool2d<double>(x, y, total, h, w, oh, ow, kh, kw, sh, sw, dh, dw, pad_top, pad_left,
                          pad_bottom, pad_right, mode);
}
