// Row-wise softmax / log-softmax over the last axis of a contiguous (rows, cols) array.
//
//   m = max_j x[r, j];  s = sum_j exp(x[r, j] - m)
//   softmax:     y[r, j] = exp(x[r, j] - m) / s
//   log_softmax: y[r, j] = x[r, j] - m - log(s)
//
// One block per row (grid-stride over rows), blockDim.x a power of two <= 1024 and
// shared memory of blockDim.x elements of T. Three passes over the row (max, sum, write) all read
// from global memory with consecutive threads on consecutive columns; the reductions run in shared
// memory. Against three separate library calls (max, exp-sum, divide) this saves two full
// round trips to memory and the temporaries. Compiled at run time with NVRTC (cupy.RawModule).

// INFINITY comes from math.h, which NVRTC does not include; build -inf from its bit pattern.
template <typename T>
__device__ __forceinline__ T hetero_neg_inf();

template <>
__device__ __forceinline__ float hetero_neg_inf<float>() {
    return __int_as_float(0xff800000);
}

template <>
__device__ __forceinline__ double hetero_neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}

template <typename T>
__device__ __forceinline__ T hetero_block_reduce(T* buf, T v, bool take_max) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            T other = buf[threadIdx.x + half];
            T mine = buf[threadIdx.x];
            buf[threadIdx.x] = take_max ? (other > mine ? other : mine) : mine + other;
        }
        __syncthreads();
    }
    T result = buf[0];
    __syncthreads();  // buf is reused by the next reduction
    return result;
}

template <typename T>
__device__ __forceinline__ void hetero_softmax(const T* __restrict__ x, T* __restrict__ y,
                                               long long rows, long long cols, int log_mode,
                                               T* buf) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        T m = hetero_neg_inf<T>();
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            m = xr[j] > m ? xr[j] : m;
        }
        m = hetero_block_reduce<T>(buf, m, true);
        T s = 0;
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            s += exp(xr[j] - m);
        }
        s = hetero_block_reduce<T>(buf, s, false);
        if (log_mode) {
            T shift = m + log(s);
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
                yr[j] = xr[j] - shift;
            }
        } else {
            T inv = (T)1 / s;
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
                yr[j] = exp(xr[j] - m) * inv;
            }
        }
    }
}

extern "C" __global__ void softmax_f32(const float* __restrict__ x, float* __restrict__ y,
                                       long long rows, long long cols, int log_mode) {
    extern __shared__ float hetero_softmax_buf_f32[];
    hetero_softmax<float>(x, y, rows, cols, log_mode, hetero_softmax_buf_f32);
}

extern "C" __global__ void softmax_f64(const double* __restrict__ x, double* __restrict__ y,
                                       long long rows, long long cols, int log_mode) {
    extern __shared__ double hetero_softmax_buf_f64[];
    hetero_softmax<double>(x, y, rows, cols, log_mode, hetero_softmax_buf_f64);
}
