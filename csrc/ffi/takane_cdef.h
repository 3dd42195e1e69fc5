/* cffi declarations: a preprocessor-free copy of the prototypes in takane/takane.h.
 * The generated wrapper includes the real header, so a prototype that drifts from it
 * fails to compile. Keep the order and spelling of the header. */
#define TAKANE_ABI_VERSION 1
#define TAKANE_MAX_K 2147483647

typedef enum takane_status {
    TAKANE_OK = 0,
    TAKANE_ERR_NULL_POINTER = 1,
    TAKANE_ERR_NEGATIVE_DIMENSION = 2,
    TAKANE_ERR_K_TOO_LARGE = 3,
    TAKANE_ERR_BAD_STRIDE = 4,
    TAKANE_ERR_NAN = 5,
    TAKANE_ERR_PADDING_BITS = 6,
    TAKANE_ERR_ISA_UNKNOWN = 7,
    TAKANE_ERR_ISA_UNSUPPORTED = 8,
    TAKANE_ERR_ENV_ISA = 9,
    TAKANE_ERR_OUT_OF_MEMORY = 10,
    TAKANE_ERR_BAD_THRESHOLD_LEN = 11,
    TAKANE_ERR_BAD_THREADS = 12,
    TAKANE_ERR_NOT_FINITE = 13,
    TAKANE_ERR_BAD_GROUP_SIZE = 14,
    TAKANE_ERR_BAD_ACTIVATIONS = 15,
    TAKANE_ERR_BAD_GEOMETRY = 16
} takane_status;

#define TAKANE_ACTIVATIONS_F32 0
#define TAKANE_ACTIVATIONS_Q8_0 1

typedef enum takane_isa {
    TAKANE_ISA_AUTO = -1,
    TAKANE_ISA_SCALAR = 0,
    TAKANE_ISA_AVX2 = 1,
    TAKANE_ISA_AVX512 = 2,
    TAKANE_ISA_NEON = 3
} takane_isa;

unsigned takane_abi_version(void);
const char *takane_version_string(void);
const char *takane_status_string(takane_status status);

uint32_t takane_isa_compiled(void);
uint32_t takane_isa_supported(void);
takane_isa takane_isa_active(void);
takane_status takane_isa_force(takane_isa isa);
takane_isa takane_isa_last_used(void);
const char *takane_isa_name(takane_isa isa);
takane_status takane_isa_from_name(const char *name, takane_isa *isa_out);

takane_status takane_pack_f32(int64_t rows, int64_t k,
                              const float *x, int64_t x_row_stride,
                              const float *threshold, int64_t threshold_len,
                              uint64_t *bits, int64_t bits_row_stride);
takane_status takane_check_padding(int64_t rows, int64_t k,
                                   const uint64_t *bits, int64_t row_stride);

takane_status takane_binary_matmul(int64_t m, int64_t n, int64_t k,
                                   const uint64_t *x, int64_t x_row_stride,
                                   const uint64_t *w, int64_t w_row_stride,
                                   int32_t *y, int64_t y_row_stride,
                                   int32_t threads);
takane_status takane_binary_matmul_f32(int64_t m, int64_t n, int64_t k,
                                       const float *x, int64_t x_row_stride,
                                       const float *threshold, int64_t threshold_len,
                                       const uint64_t *w, int64_t w_row_stride,
                                       int32_t *y, int64_t y_row_stride,
                                       int32_t threads);

int32_t takane_default_threads(void);
takane_status takane_probe_peak(takane_isa isa, double seconds, double *bitmacs_per_second);

typedef struct takane_weights takane_weights;
takane_status takane_weights_create(int64_t n, int64_t k, const uint64_t *w,
                                    int64_t w_row_stride, takane_weights **out);
void takane_weights_free(takane_weights *weights);
takane_status takane_weights_info(const takane_weights *weights, int64_t *n,
                                  int64_t *k, int64_t *nbytes);
takane_status takane_binary_matmul_prepacked(const takane_weights *weights, int64_t m,
                                             const uint64_t *x, int64_t x_row_stride,
                                             int32_t *y, int64_t y_row_stride,
                                             int32_t threads);
takane_status takane_binary_matmul_prepacked_f32(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *threshold, int64_t threshold_len, int32_t *y, int64_t y_row_stride,
    int32_t threads);
takane_status takane_binary_linear(int64_t m, int64_t n, int64_t k,
                                   const uint64_t *x, int64_t x_row_stride,
                                   const uint64_t *w, int64_t w_row_stride,
                                   const float *scale, const float *bias,
                                   const float *row_scale,
                                   float *y, int64_t y_row_stride,
                                   int32_t threads);
takane_status takane_binary_linear_f32(int64_t m, int64_t n, int64_t k,
                                       const float *x, int64_t x_row_stride,
                                       const float *threshold, int64_t threshold_len,
                                       int32_t activation_scale,
                                       const uint64_t *w, int64_t w_row_stride,
                                       const float *scale, const float *bias,
                                       float *y, int64_t y_row_stride,
                                       int32_t threads);
takane_status takane_binary_linear_bits(int64_t m, int64_t n, int64_t k,
                                        const uint64_t *x, int64_t x_row_stride,
                                        const uint64_t *w, int64_t w_row_stride,
                                        const float *scale, const float *bias,
                                        const float *row_scale,
                                        const float *out_threshold,
                                        int64_t out_threshold_len,
                                        uint64_t *y, int64_t y_row_stride,
                                        int32_t threads);
takane_status takane_binary_linear_f32_bits(int64_t m, int64_t n, int64_t k,
                                            const float *x, int64_t x_row_stride,
                                            const float *threshold,
                                            int64_t threshold_len,
                                            int32_t activation_scale,
                                            const uint64_t *w, int64_t w_row_stride,
                                            const float *scale, const float *bias,
                                            const float *out_threshold,
                                            int64_t out_threshold_len,
                                            uint64_t *y, int64_t y_row_stride,
                                            int32_t threads);
takane_status takane_binary_linear_prepacked(const takane_weights *weights, int64_t m,
                                             const uint64_t *x, int64_t x_row_stride,
                                             const float *scale, const float *bias,
                                             const float *row_scale, float *y,
                                             int64_t y_row_stride, int32_t threads);
takane_status takane_binary_linear_prepacked_f32(const takane_weights *weights, int64_t m,
                                                 const float *x, int64_t x_row_stride,
                                                 const float *threshold, int64_t threshold_len,
                                                 int32_t activation_scale, const float *scale,
                                                 const float *bias, float *y,
                                                 int64_t y_row_stride, int32_t threads);
takane_status takane_binary_linear_prepacked_bits(const takane_weights *weights, int64_t m,
                                                  const uint64_t *x, int64_t x_row_stride,
                                                  const float *scale, const float *bias,
                                                  const float *row_scale,
                                                  const float *out_threshold,
                                                  int64_t out_threshold_len, uint64_t *y,
                                                  int64_t y_row_stride, int32_t threads);
takane_status takane_binary_linear_prepacked_f32_bits(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *threshold, int64_t threshold_len, int32_t activation_scale, const float *scale,
    const float *bias, const float *out_threshold, int64_t out_threshold_len, uint64_t *y,
    int64_t y_row_stride, int32_t threads);

takane_status takane_binary_weight_matmul(int64_t m, int64_t n, int64_t k,
                                          const float *x, int64_t x_row_stride,
                                          const uint64_t *w, int64_t w_row_stride,
                                          const float *in_scale, const float *scale,
                                          const float *bias,
                                          float *y, int64_t y_row_stride,
                                          int32_t threads);
takane_status takane_binary_weight_matmul_prepacked(const takane_weights *weights, int64_t m,
                                                    const float *x, int64_t x_row_stride,
                                                    const float *in_scale, const float *scale,
                                                    const float *bias, float *y,
                                                    int64_t y_row_stride, int32_t threads);

takane_status takane_binary_weight_matmul_ex(
    int64_t m, int64_t n, int64_t k, const float *x, int64_t x_row_stride, const uint64_t *w,
    int64_t w_row_stride, const float *in_scale, const float *scale, const float *group_scale,
    int64_t group_size, const float *bias, int32_t activations, float *y, int64_t y_row_stride,
    int32_t threads);
takane_status takane_binary_weight_matmul_prepacked_ex(
    const takane_weights *weights, int64_t m, const float *x, int64_t x_row_stride,
    const float *in_scale, const float *scale, const float *group_scale, int64_t group_size,
    const float *bias, int32_t activations, float *y, int64_t y_row_stride, int32_t threads);
takane_status takane_q1_0_to_bits(int64_t n, int64_t k, const uint8_t *q,
                                  int64_t q_row_stride, uint64_t *bits,
                                  int64_t bits_row_stride, float *group_scale,
                                  int64_t group_scale_row_stride);
takane_status takane_bits_to_q1_0(int64_t n, int64_t k, const uint64_t *bits,
                                  int64_t bits_row_stride, const float *group_scale,
                                  int64_t group_scale_row_stride, uint8_t *q,
                                  int64_t q_row_stride);
typedef struct takane_conv_weights takane_conv_weights;
takane_status takane_conv_weights_create(int64_t out_channels, int64_t kernel_h,
                                         int64_t kernel_w, int64_t in_channels,
                                         int64_t groups, const uint64_t *w,
                                         takane_conv_weights **out);
void takane_conv_weights_free(takane_conv_weights *weights);
takane_status takane_conv_weights_info(const takane_conv_weights *weights,
                                       int64_t *out_channels, int64_t *in_channels,
                                       int64_t *kernel_h, int64_t *kernel_w,
                                       int64_t *groups, int64_t *nbytes);
typedef struct takane_conv2d_geometry {
    int64_t batch, in_h, in_w;
    int64_t stride_h, stride_w;
    int64_t dilation_h, dilation_w;
    int64_t pad_top, pad_bottom, pad_left, pad_right;
    int32_t pad_value;
} takane_conv2d_geometry;
takane_status takane_conv2d_output_size(const takane_conv_weights *weights,
                                        const takane_conv2d_geometry *geometry,
                                        int64_t *out_h, int64_t *out_w);
takane_status takane_binary_conv2d(const takane_conv_weights *weights,
                                   const takane_conv2d_geometry *geometry,
                                   const uint64_t *x, const float *scale,
                                   const float *bias, const float *residual,
                                   float *y, int32_t threads);
takane_status takane_binary_conv2d_bits(const takane_conv_weights *weights,
                                        const takane_conv2d_geometry *geometry,
                                        const uint64_t *x, const float *scale,
                                        const float *bias, const float *residual,
                                        const float *out_threshold,
                                        int64_t out_threshold_len, uint64_t *y,
                                        int32_t threads);
takane_status takane_binary_conv2d_f32(const takane_conv_weights *weights,
                                       const takane_conv2d_geometry *geometry,
                                       const float *x, const float *threshold,
                                       int64_t threshold_len, const float *scale,
                                       const float *bias, const float *residual,
                                       float *y, int32_t threads);
takane_status takane_binary_conv2d_f32_bits(
    const takane_conv_weights *weights, const takane_conv2d_geometry *geometry,
    const float *x, const float *threshold, int64_t threshold_len, const float *scale,
    const float *bias, const float *residual, const float *out_threshold,
    int64_t out_threshold_len, uint64_t *y, int32_t threads);
takane_status takane_binary_max_pool2d(const takane_conv2d_geometry *geometry,
                                       int64_t channels, int64_t kernel_h,
                                       int64_t kernel_w, const uint64_t *x,
                                       uint64_t *y, int32_t threads);

/* ---- bring your own threads ---- */
#define TAKANE_Q8_0_BLOCK 32
#define TAKANE_Q8_0_BLOCK_BYTES 34
#define TAKANE_Q1_0_BLOCK 128
#define TAKANE_Q1_0_BLOCK_BYTES 18
#define TAKANE_ROW_ALIGN 8
takane_status takane_quantize_q8_0(int64_t rows, int64_t k, const float *x,
                                   int64_t x_row_stride, void *q, int64_t q_row_stride);
takane_status takane_weights_q1_0_size(int64_t n, int64_t k, int64_t *bytes);
takane_status takane_weights_from_q1_0(int64_t n, int64_t k, const void *q,
                                       int64_t q_row_stride, void *mem, int64_t mem_bytes,
                                       takane_weights **out);
int64_t takane_matmul_q8_0_scratch_size(const takane_weights *weights, int64_t m);
takane_status takane_matmul_q8_0_rows(const takane_weights *weights, int64_t r0, int64_t r1,
                                      int64_t m, const void *q, int64_t q_row_stride,
                                      const float *scale, const float *group_scale,
                                      int64_t group_size, const float *bias, float *y,
                                      int64_t y_row_stride, void *scratch,
                                      int64_t scratch_bytes);
takane_status takane_weights_dequantize_rows(const takane_weights *weights, int64_t r0,
                                             int64_t r1, float *y, int64_t y_row_stride);

/* ---- measured machine limits (issue 21) ---- */
takane_status takane_probe_dram_bandwidth(const void *buf, int64_t bytes, int32_t threads,
                                          int32_t repeat, double *bytes_per_second);
takane_status takane_probe_peak_int8(takane_isa isa, double seconds, double *macs_per_second);
