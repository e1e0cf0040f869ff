// int4 weight products for many rows at once, AVX-512 VNNI: an ONNX Runtime custom operator.
//
// ONNX Runtime's MatMulNBits (int4 weights, int8 arithmetic: accuracy level 4) reads the weights at
// the memory's pace for one row, but a step of 8 rows costs 2.55x one row's (int4-kernel-rows): its
// several-row kernel is far from the arithmetic these cores have. This one computes what
// MatMulNBits computes (blocks of 256 weights, one float scale each, zero point 8; each row
// quantized to int8 per block with a scale of max|x| / 127) on a layout made for VNNI: 16 columns
// side by side in one register, 4 consecutive weights of each in a 32-bit lane, so one vpdpbusd
// adds 4 products to each of 16 columns for one row, every weight unpacked once for up to 8 rows.
// A row's result never depends on the other rows in the call (same operations, same order), so a
// batch of streams gets the logits each would get alone.
//
// Layout (written by int4_vnni.py from MatMulNBits' [N][blocks][128] bytes, low nibble first):
//   weights [N/16][blocks][32 pairs][64 bytes]: byte 4*c + j of pair p holds column c's weight
//   8p + j of the block in its low nibble and weight 8p + 4 + j in its high nibble;
//   scales  [N/16][blocks][16].
// N is a multiple of 32 (the rewrite leaves other products to MatMulNBits); K need not be one of 256:
// a last, partial block is padded with zeros, in the weights (MatMulNBits' own layout) and the rows.
//
// Built by int4_vnni.py with gcc; loaded by ONNX Runtime (SessionOptions.register_custom_ops_library),
// which calls RegisterCustomOps. Only a few entries of ONNX Runtime's C API table are used; their
// positions are ABI (the table only ever grows), declared below.
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 256
#define PAIRS (BLOCK / 8)          // 64-byte loads of packed weights per block and group of 16 columns
#define GROUP_BYTES (BLOCK / 2 * 16)  // one block of 16 columns

// ---- the kernel -------------------------------------------------------------------------------

// 16 floats of a block from p + i, zeros from `valid` on (the padding of a last, partial block).
static inline __m512 load16(const float *p, int i, int valid) {
    if (i + 16 <= valid) return _mm512_loadu_ps(p + i);
    if (i >= valid) return _mm512_setzero_ps();
    return _mm512_maskz_loadu_ps((__mmask16)((1u << (valid - i)) - 1), p + i);
}

// Each row of x [M][K] to int8 per block: q [M][blocks * 256], scale [M][blocks], sum of q [M][blocks]
// (float). When K is not a multiple of 256 the last block is padded with zeros, as MatMulNBits pads it:
// the same scale (max|x| over the values there are) and nothing added by the padded weights.
static void quantize_rows(const float *x, int64_t M, int64_t K, int8_t *q, float *scale, float *qsum) {
    int64_t blocks = (K + BLOCK - 1) / BLOCK;
    for (int64_t m = 0; m < M; m++)
        for (int64_t b = 0; b < blocks; b++) {
            const float *xb = x + m * K + b * BLOCK;
            int valid = K - b * BLOCK < BLOCK ? (int)(K - b * BLOCK) : BLOCK;
            __m512 most = _mm512_setzero_ps();
            for (int i = 0; i < BLOCK; i += 16) most = _mm512_max_ps(most, _mm512_abs_ps(load16(xb, i, valid)));
            float amax = _mm512_reduce_max_ps(most);
            __m512 inverse = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            __m512i sum = _mm512_setzero_si512();
            int8_t *qb = q + (m * blocks + b) * BLOCK;
            for (int i = 0; i < BLOCK; i += 16) {
                __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load16(xb, i, valid), inverse));  // round to nearest even
                sum = _mm512_add_epi32(sum, v);
                _mm_storeu_si128((__m128i *)(qb + i), _mm512_cvtsepi32_epi8(v));
            }
            scale[m * blocks + b] = amax / 127.0f;
            qsum[m * blocks + b] = (float)_mm512_reduce_add_epi32(sum);
        }
}

static inline __m512i broadcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// One tile: R rows (named accumulators, so they stay in registers) by 32 columns (two groups).
#define DECLARE(r) __m512i a##r = _mm512_setzero_si512(), b##r = a##r;
#define MULTIPLY(r) { const int8_t *q = q##r + k; __m512i x0 = broadcast4(q), x1 = broadcast4(q + 4); \
        a##r = _mm512_dpbusd_epi32(a##r, w0, x0); b##r = _mm512_dpbusd_epi32(b##r, v0, x0);          \
        a##r = _mm512_dpbusd_epi32(a##r, w1, x1); b##r = _mm512_dpbusd_epi32(b##r, v1, x1); }
// The block's integer sums to floats: (sum - 8 * sum of q) * weight scale * row scale.
#define SCALE(r) { __m512 s = _mm512_set1_ps(scale[(r) * blocks + blk]), z = _mm512_set1_ps(8.0f * qsum[(r) * blocks + blk]); \
        out[r][0] = _mm512_fmadd_ps(s, _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(a##r), z), sw0), out[r][0]);               \
        out[r][1] = _mm512_fmadd_ps(s, _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(b##r), z), sw1), out[r][1]); }
#define ROW_POINTER(r) const int8_t *q##r = q + (size_t)(r) * K;
#define ROWS1(X) X(0)
#define ROWS2(X) X(0) X(1)
#define ROWS4(X) ROWS2(X) X(2) X(3)
#define ROWS8(X) ROWS4(X) X(4) X(5) X(6) X(7)

#define TILE(R)                                                                                            \
static void tile##R(int64_t K, const uint8_t *w, const float *ws, const int8_t *q, const float *scale,      \
                    const float *qsum, float *y, int64_t ldy, int rows) {                                   \
    int64_t blocks = K / BLOCK;                                                                            \
    const uint8_t *w2 = w + blocks * GROUP_BYTES;  /* the second group of 16 columns */                     \
    const float *ws2 = ws + blocks * 16;                                                                   \
    __m512 out[R][2];                                                                                      \
    for (int r = 0; r < R; r++) out[r][0] = out[r][1] = _mm512_setzero_ps();                               \
    const __m512i low = _mm512_set1_epi8(15);                                                              \
    ROWS##R(ROW_POINTER)                                                                                   \
    for (int64_t blk = 0; blk < blocks; blk++) {                                                           \
        ROWS##R(DECLARE)                                                                                   \
        const uint8_t *p1 = w + blk * GROUP_BYTES, *p2 = w2 + blk * GROUP_BYTES;                            \
        for (int p = 0; p < PAIRS; p++) {                                                                  \
            __m512i x = _mm512_loadu_si512(p1 + p * 64), xx = _mm512_loadu_si512(p2 + p * 64);             \
            __m512i w0 = _mm512_and_si512(x, low), w1 = _mm512_and_si512(_mm512_srli_epi16(x, 4), low);   \
            __m512i v0 = _mm512_and_si512(xx, low), v1 = _mm512_and_si512(_mm512_srli_epi16(xx, 4), low); \
            int64_t k = blk * BLOCK + 8 * p;                                                               \
            ROWS##R(MULTIPLY)                                                                              \
        }                                                                                                  \
        __m512 sw0 = _mm512_loadu_ps(ws + blk * 16), sw1 = _mm512_loadu_ps(ws2 + blk * 16);                \
        ROWS##R(SCALE)                                                                                     \
    }                                                                                                      \
    for (int r = 0; r < rows; r++) {                                                                       \
        _mm512_storeu_ps(y + r * ldy, out[r][0]);                                                          \
        _mm512_storeu_ps(y + r * ldy + 16, out[r][1]);                                                     \
    }                                                                                                      \
}
TILE(1)
TILE(2)
TILE(4)
TILE(8)

// The quantized rows of one call, padded with zero rows to a multiple of 8 (tiles of 4 and 8 read them);
// K here is the padded row length, blocks * 256.
typedef struct {
    int64_t M, N, K, blocks;
    const uint8_t *w;
    const float *ws;
    int8_t *q;
    float *scale, *qsum, *y;
} Product;

static Product *product_new(const float *x, int64_t M, int64_t N, int64_t K, const uint8_t *w, const float *ws, float *y) {
    int64_t padded = (M + 7) / 8 * 8, blocks = (K + BLOCK - 1) / BLOCK;
    Product *p = calloc(1, sizeof(Product));
    if (!p) return NULL;
    p->q = calloc((size_t)(padded * blocks * BLOCK), 1);
    p->scale = calloc((size_t)(padded * blocks), sizeof(float));
    p->qsum = calloc((size_t)(padded * blocks), sizeof(float));
    if (!p->q || !p->scale || !p->qsum) {
        free(p->q), free(p->scale), free(p->qsum), free(p);
        return NULL;
    }
    *p = (Product){M, N, blocks * BLOCK, blocks, w, ws, p->q, p->scale, p->qsum, y};
    quantize_rows(x, M, K, p->q, p->scale, p->qsum);
    return p;
}

static void product_free(Product *p) {
    free(p->q), free(p->scale), free(p->qsum), free(p);
}

// Work item i: columns 32i..32i+31 of every row.
static void product_columns(void *data, size_t i) {
    const Product *p = data;
    const uint8_t *w = p->w + i * 2 * p->blocks * GROUP_BYTES;
    const float *ws = p->ws + i * 2 * p->blocks * 16;
    for (int64_t m = 0; m < p->M; m += 8) {
        int rows = p->M - m < 8 ? (int)(p->M - m) : 8;
        const int8_t *q = p->q + m * p->K;
        const float *scale = p->scale + m * p->blocks, *qsum = p->qsum + m * p->blocks;
        float *y = p->y + m * p->N + i * 32;
        if (rows == 1) tile1(p->K, w, ws, q, scale, qsum, y, p->N, rows);
        else if (rows == 2) tile2(p->K, w, ws, q, scale, qsum, y, p->N, rows);
        else if (rows <= 4) tile4(p->K, w, ws, q, scale, qsum, y, p->N, rows);
        else tile8(p->K, w, ws, q, scale, qsum, y, p->N, rows);
    }
}

// y [M][N] = x [M][K] times the weights, on this thread (tests call it through ctypes). 0: done.
int maas_int4_vnni_matmul(const float *x, int64_t M, int64_t N, int64_t K, const uint8_t *w, const float *ws, float *y) {
    if (N % 32) return -1;
    Product *p = product_new(x, M, N, K, w, ws, y);
    if (!p) return -2;
    for (size_t i = 0; i < (size_t)(N / 32); i++) product_columns(p, i);
    product_free(p);
    return 0;
}

int maas_int4_vnni_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

// ---- ONNX Runtime custom operator: Int4VnniMatMul (domain maas.int4) ----------------------------
// Inputs: A float [..., K], the repacked weights (uint8), the repacked scales (float); attributes
// K, N; output float [..., N]. The work is split over columns on ONNX Runtime's own intra-op threads.

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtShapeInfo OrtShapeInfo;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef void *const *OrtApi;  // the table of C API entries, read by position
typedef struct {
    const void *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

// Positions in ONNX Runtime's C API table (struct OrtApi of onnxruntime_c_api.h; the table only grows, so
// a position never changes once added), checked against onnxruntime 1.31.1's own table
enum {
    API_CREATE_STATUS = 0,
    API_CREATE_CUSTOM_OP_DOMAIN = 26,
    API_CUSTOM_OP_DOMAIN_ADD = 27,
    API_ADD_CUSTOM_OP_DOMAIN = 28,
    API_KERNEL_INFO_GET_ATTRIBUTE_INT64 = 86,
    API_KERNEL_CONTEXT_GET_INPUT = 90,
    API_KERNEL_CONTEXT_GET_OUTPUT = 91,
    API_GET_TENSOR_MUTABLE_DATA = 51,
    API_GET_TENSOR_TYPE_AND_SHAPE = 65,
    API_GET_DIMENSIONS_COUNT = 61,
    API_GET_DIMENSIONS = 62,
    API_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO = 99,
    API_KERNEL_CONTEXT_PARALLEL_FOR = 274,
};
#define API_VERSION 16  // asked of GetApi and set in the operator: ONNX Runtime reads CreateKernelV2/KernelComputeV2 from 16
#define CALL(api, index, type) ((type)(api)[index])

enum { TYPE_FLOAT = 1, TYPE_UINT8 = 2 };  // ONNXTensorElementDataType
enum { ERROR_FAIL = 1, ERROR_INVALID_ARGUMENT = 2 };  // OrtErrorCode

typedef struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct OrtCustomOp *op, const void *api, const OrtKernelInfo *info);
    const char *(*GetName)(const struct OrtCustomOp *op);
    const char *(*GetExecutionProviderType)(const struct OrtCustomOp *op);
    int (*GetInputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const struct OrtCustomOp *op);
    int (*GetOutputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const struct OrtCustomOp *op);
    void (*KernelCompute)(void *kernel, OrtKernelContext *context);
    void (*KernelDestroy)(void *kernel);
    int (*GetInputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int (*GetOutputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int (*GetInputMemoryType)(const struct OrtCustomOp *op, size_t index);
    int (*GetVariadicInputMinArity)(const struct OrtCustomOp *op);
    int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp *op);
    int (*GetVariadicOutputMinArity)(const struct OrtCustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp *op);
    OrtStatus *(*CreateKernelV2)(const struct OrtCustomOp *op, const void *api, const OrtKernelInfo *info, void **kernel);
    OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *context);
} OrtCustomOp;

typedef struct {
    OrtApi api;
    int64_t K, N;
} Kernel;

static OrtStatus *create_kernel(const OrtCustomOp *op, const void *api, const OrtKernelInfo *info, void **out) {
    (void)op;
    OrtApi table = api;  // the table itself
    Kernel *kernel = calloc(1, sizeof(Kernel));
    if (!kernel) return CALL(table, API_CREATE_STATUS, OrtStatus *(*)(int, const char *))(ERROR_FAIL, "out of memory");
    kernel->api = table;
    typedef OrtStatus *(*GetInt)(const OrtKernelInfo *, const char *, int64_t *);
    OrtStatus *status = CALL(table, API_KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "K", &kernel->K);
    if (!status) status = CALL(table, API_KERNEL_INFO_GET_ATTRIBUTE_INT64, GetInt)(info, "N", &kernel->N);
    if (!status && (kernel->K < 1 || kernel->N < 1 || kernel->N % 32))
        status = CALL(table, API_CREATE_STATUS, OrtStatus *(*)(int, const char *))(
            ERROR_INVALID_ARGUMENT, "Int4VnniMatMul: K must be positive and N a multiple of 32");
    if (status) {
        free(kernel);
        return status;
    }
    *out = kernel;
    return NULL;
}

static OrtStatus *compute(void *data, OrtKernelContext *context) {
    Kernel *kernel = data;
    OrtApi api = kernel->api;
    typedef OrtStatus *(*GetInput)(const OrtKernelContext *, size_t, const OrtValue **);
    typedef OrtStatus *(*Data)(const OrtValue *, void **);
    const OrtValue *inputs[3];
    void *pointers[3];
    OrtStatus *status = NULL;
    for (size_t i = 0; i < 3 && !status; i++) {
        status = CALL(api, API_KERNEL_CONTEXT_GET_INPUT, GetInput)(context, i, &inputs[i]);
        if (!status) status = CALL(api, API_GET_TENSOR_MUTABLE_DATA, Data)(inputs[i], &pointers[i]);
    }
    if (status) return status;
    OrtShapeInfo *shape;
    size_t rank = 0;
    int64_t dims[8];
    status = CALL(api, API_GET_TENSOR_TYPE_AND_SHAPE, OrtStatus *(*)(const OrtValue *, OrtShapeInfo **))(inputs[0], &shape);
    if (status) return status;
    status = CALL(api, API_GET_DIMENSIONS_COUNT, OrtStatus *(*)(const OrtShapeInfo *, size_t *))(shape, &rank);
    if (!status && (rank < 1 || rank > 8))
        status = CALL(api, API_CREATE_STATUS, OrtStatus *(*)(int, const char *))(ERROR_INVALID_ARGUMENT, "Int4VnniMatMul: A must have 1 to 8 dimensions");
    if (!status) status = CALL(api, API_GET_DIMENSIONS, OrtStatus *(*)(const OrtShapeInfo *, int64_t *, size_t))(shape, dims, rank);
    CALL(api, API_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO, void (*)(OrtShapeInfo *))(shape);
    if (status) return status;
    if (dims[rank - 1] != kernel->K)
        return CALL(api, API_CREATE_STATUS, OrtStatus *(*)(int, const char *))(ERROR_INVALID_ARGUMENT, "Int4VnniMatMul: A's last dimension is not K");
    int64_t M = 1;
    for (size_t i = 0; i + 1 < rank; i++) M *= dims[i];
    dims[rank - 1] = kernel->N;
    OrtValue *output;
    typedef OrtStatus *(*GetOutput)(OrtKernelContext *, size_t, const int64_t *, size_t, OrtValue **);
    status = CALL(api, API_KERNEL_CONTEXT_GET_OUTPUT, GetOutput)(context, 0, dims, rank, &output);
    void *y;
    if (!status) status = CALL(api, API_GET_TENSOR_MUTABLE_DATA, Data)(output, &y);
    if (status || M == 0) return status;
    Product *p = product_new(pointers[0], M, kernel->N, kernel->K, pointers[1], pointers[2], y);
    if (!p) return CALL(api, API_CREATE_STATUS, OrtStatus *(*)(int, const char *))(ERROR_FAIL, "Int4VnniMatMul: out of memory");
    typedef OrtStatus *(*ParallelFor)(const OrtKernelContext *, void (*)(void *, size_t), size_t, size_t, void *);
    status = CALL(api, API_KERNEL_CONTEXT_PARALLEL_FOR, ParallelFor)(context, product_columns, (size_t)(kernel->N / 32), 0, p);
    product_free(p);
    return status;
}

static void destroy_kernel(void *kernel) { free(kernel); }
static const char *op_name(const OrtCustomOp *op) { (void)op; return "Int4VnniMatMul"; }
static const char *op_provider(const OrtCustomOp *op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const OrtCustomOp *op, size_t index) { (void)op; return index == 1 ? TYPE_UINT8 : TYPE_FLOAT; }
static size_t input_count(const OrtCustomOp *op) { (void)op; return 3; }
static int output_type(const OrtCustomOp *op, size_t index) { (void)op, (void)index; return TYPE_FLOAT; }
static size_t output_count(const OrtCustomOp *op) { (void)op; return 1; }
static int required(const OrtCustomOp *op, size_t index) { (void)op, (void)index; return 0; }  // INPUT_OUTPUT_REQUIRED
static int default_memory(const OrtCustomOp *op, size_t index) { (void)op, (void)index; return 0; }  // OrtMemTypeDefault
static int one(const OrtCustomOp *op) { (void)op; return 1; }

static const OrtCustomOp INT4_VNNI_MATMUL = {
    .version = API_VERSION,
    .GetName = op_name,
    .GetExecutionProviderType = op_provider,
    .GetInputType = input_type,
    .GetInputTypeCount = input_count,
    .GetOutputType = output_type,
    .GetOutputTypeCount = output_count,
    .KernelDestroy = destroy_kernel,
    .GetInputCharacteristic = required,
    .GetOutputCharacteristic = required,
    .GetInputMemoryType = default_memory,
    .GetVariadicInputMinArity = one,
    .GetVariadicInputHomogeneity = one,
    .GetVariadicOutputMinArity = one,
    .GetVariadicOutputHomogeneity = one,
    .CreateKernelV2 = create_kernel,
    .KernelComputeV2 = compute,
};

// Called by ONNX Runtime when a session's options load this library.
__attribute__((visibility("default"))) OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    OrtApi api = base->GetApi(API_VERSION);
    if (!api) return NULL;  // cannot happen on 1.16+; nothing registered, the graph's load then names the op
    static OrtCustomOpDomain *domain;  // lives as long as the process: sessions keep pointing at it
    OrtStatus *status = NULL;
    if (!domain) {
        status = CALL(api, API_CREATE_CUSTOM_OP_DOMAIN, OrtStatus *(*)(const char *, OrtCustomOpDomain **))("maas.int4", &domain);
        if (!status) status = CALL(api, API_CUSTOM_OP_DOMAIN_ADD, OrtStatus *(*)(OrtCustomOpDomain *, const OrtCustomOp *))(domain, &INT4_VNNI_MATMUL);
        if (status) {
            domain = NULL;
            return status;
        }
    }
    return CALL(api, API_ADD_CUSTOM_OP_DOMAIN, OrtStatus *(*)(OrtSessionOptions *, OrtCustomOpDomain *))(options, domain);
}
