// takane_kernels as a ggml CPU extra buffer type ("CPU_TAKANE").
//
// Part of takane_kernels (integrations/llama.cpp/), not of llama.cpp: build.sh copies this file
// into ggml/src/ggml-cpu/takane/ of the pinned llama.cpp and patches two ggml files to list it
// and to link the installed takane_kernels library (find_package, never a copy of its sources).
//
// What it takes, and nothing else (every other op stays on ggml's own code, because the CPU
// backend asks supports_op() below about any op reading a tensor of this buffer type and has
// no fallback: a "no" here keeps the weight out of this buffer at load time):
//   - MUL_MAT with src0 a 2-D Q1_0 weight of this buffer type (ne00 % 128 == 0), src1 F32 in
//     host memory with contiguous rows, any batch: ne11 tokens, and src1's ne12 / ne13 broadcast
//     over the one weight matrix (a 2-D src0 is the same matrix for every i12, i13, so all
//     ne11 * ne12 * ne13 rows of src1 form one batch), dst F32 contiguous;
//   - GET_ROWS on such a weight (the token embedding; with tied embeddings the same tensor is
//     also the output projection, so one repacked copy serves both ops).
// MUL_MAT_ID (mixture of experts), 3-D weights and every other type say no.
//
// Weights: set_tensor() repacks the Q1_0 bytes into a takane_weights handle built inside the
// tensor's own memory (get_alloc_size() = takane_weights_q1_0_size(), ~1.11x the Q1_0 bytes),
// so tensor->data IS the handle and no second copy exists. get_tensor is unsupported (the
// bytes are no longer Q1_0), as in ggml's other repacking buffer types.
//
// Compute, on ggml's own threads (takane_kernels starts none here): every thread quantizes
// its share of src1's rows to Q8_0 into the shared work buffer (with ggml's own quantizer, so
// the activations are exactly the ones the stock Q1_0 x Q8_0 path uses; see mul_mat), a
// barrier, then the threads take chunks of weight rows (output columns) for the whole batch
// and compute them with takane_matmul_q8_0_rows into dst.

#include "ggml-cpu-takane.h"

#include "ggml-backend-impl.h"
#include "ggml-cpu-impl.h"
#include "ggml-cpu.h"
#include "ggml-impl.h"
#include "traits.h"

#include <takane/takane.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

constexpr size_t TAKANE_ALIGN = 64;  // handles must start 64-byte aligned (takane.h)

size_t pad64(size_t n) { return (n + TAKANE_ALIGN - 1) & ~(TAKANE_ALIGN - 1); }

char * align64(void * p) {
    return (char *) (((uintptr_t) p + TAKANE_ALIGN - 1) & ~(uintptr_t) (TAKANE_ALIGN - 1));
}

// A Q1_0 weight this buffer type can hold as a takane handle.
bool is_takane_weight(const ggml_tensor * t) {
    return t->type == GGML_TYPE_Q1_0 && ggml_n_dims(t) <= 2 && t->ne[2] == 1 && t->ne[3] == 1 &&
           t->ne[0] % TAKANE_Q1_0_BLOCK == 0 && t->ne[0] > 0 && t->ne[1] > 0;
}

const takane_weights * handle_of(const ggml_tensor * w) { return (const takane_weights *) w->data; }

// Bytes of one Q8_0 row of k activations.
size_t q8_row_bytes(int64_t k) { return (size_t) (k / TAKANE_Q8_0_BLOCK) * TAKANE_Q8_0_BLOCK_BYTES; }

void check(takane_status st, const char * what, const ggml_tensor * t) {
    if (st != TAKANE_OK) {
        GGML_ABORT("CPU_TAKANE: %s on tensor '%s' failed: %s", what, t->name, takane_status_string(st));
    }
}

bool use_ref_quantizer() {
    static const bool ref = [] {
        const char * v = getenv("TAKANE_GGML_Q8_0");
        return v != nullptr && strcmp(v, "ref") == 0;
    }();
    return ref;
}

class takane_traits : public ggml::cpu::tensor_traits {
  public:
    // Work buffer of a MUL_MAT: the Q8_0 activations of all M rows, then one scratch area per
    // thread (each padded to 64 bytes), plus 64 bytes to align the start (ggml only
    // guarantees its own, smaller alignment of wdata).
    bool work_size(int n_threads, const ggml_tensor * op, size_t & size) override {
        if (op->op == GGML_OP_GET_ROWS) {
            size = 0;
            return true;
        }
        if (op->op != GGML_OP_MUL_MAT) {
            return false;
        }
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        const int64_t m = src1->ne[1] * src1->ne[2] * src1->ne[3];
        const int64_t scratch = takane_matmul_q8_0_scratch_size(handle_of(src0), m);
        size = TAKANE_ALIGN + pad64((size_t) m * q8_row_bytes(src0->ne[0])) + (size_t) n_threads * pad64((size_t) scratch);
        return true;
    }

    bool compute_forward(ggml_compute_params * params, ggml_tensor * op) override {
        if (op->op == GGML_OP_MUL_MAT) {
            mul_mat(params, op);
            return true;
        }
        if (op->op == GGML_OP_GET_ROWS) {
            get_rows(params, op);
            return true;
        }
        return false;
    }

  private:
    static void mul_mat(ggml_compute_params * params, ggml_tensor * dst) {
        const ggml_tensor * src0 = dst->src[0];
        const ggml_tensor * src1 = dst->src[1];
        const int     ith = params->ith;
        const int     nth = params->nth;
        const int64_t k   = src0->ne[0];
        const int64_t n   = src0->ne[1];
        const int64_t ne11 = src1->ne[1], ne12 = src1->ne[2], ne13 = src1->ne[3];
        const int64_t m   = ne11 * ne12 * ne13;
        const size_t  row_q = q8_row_bytes(k);

        char * q = align64(params->wdata);

        // 1. Quantize rows [ith*m/nth, (ith+1)*m/nth) of src1 (flattened over i11, i12, i13;
        // src1's own strides, so a permuted or strided batch is read correctly) into q, one
        // contiguous Q8_0 row per flat index. By default with ggml's own Q8_0 quantizer, the one
        // the stock Q1_0 path uses on this CPU: on x86 it is a SIMD version that differs from
        // quantize_row_q8_0_ref (multiplier 127/amax, round half to even) in rare elements, so
        // only with it are the activations exactly stock's and the comparison one of kernels.
        // TAKANE_GGML_Q8_0=ref selects takane_quantize_q8_0 (bit-identical to the _ref version).
        // A NaN / infinity in the activations is not an error here: the block is written so that
        // the product is NaN / infinite, as ggml's is.
        const ggml_from_float_t from_float = use_ref_quantizer() ? nullptr : ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float;
        for (int64_t r = ith * m / nth; r < (ith + 1) * m / nth; r++) {
            const int64_t i11 = r % ne11, i12 = (r / ne11) % ne12, i13 = r / (ne11 * ne12);
            const float * x = (const float *) ((const char *) src1->data + i11 * src1->nb[1] + i12 * src1->nb[2] +
                                               i13 * src1->nb[3]);
            if (from_float) {
                from_float(x, q + r * row_q, k);
                continue;
            }
            const takane_status st = takane_quantize_q8_0(1, k, x, k, q + r * row_q, (int64_t) row_q);
            if (st != TAKANE_ERR_NAN && st != TAKANE_ERR_NOT_FINITE) {
                check(st, "takane_quantize_q8_0", src1);
            }
        }
        // Chunks of weight rows are handed out dynamically (below): thread 0 sets the counter
        // before the barrier, and every thread starts with chunk ith.
        const int64_t nchunk = nth == 1 ? 1 : 8 * (int64_t) nth;
        if (ith == 0 && nth > 1) {
            ggml_threadpool_chunk_set(params->threadpool, nth);
        }
        ggml_barrier(params->threadpool);

        // 2. Weight rows (output columns) in nchunk chunks of equal size, each a multiple of
        // TAKANE_ROW_ALIGN (no edge work inside a chunk), taken first-come first-served. Dynamic
        // rather than a static 1/nth share: on a machine where other processes hold cores, a
        // thread that is descheduled would otherwise leave the others spinning at ggml's next
        // barrier (ggml's own matmul hands out chunks the same way).
        const takane_weights * w = handle_of(src0);
        const size_t scratch_bytes = pad64((size_t) takane_matmul_q8_0_scratch_size(w, m));
        char * scratch = q + pad64((size_t) m * row_q) + (size_t) ith * scratch_bytes;
        const int64_t per = ((n + nchunk - 1) / nchunk + TAKANE_ROW_ALIGN - 1) / TAKANE_ROW_ALIGN * TAKANE_ROW_ALIGN;
        for (int64_t chunk = ith; chunk < nchunk;) {
            const int64_t r0 = chunk * per;
            const int64_t r1 = r0 + per < n ? r0 + per : n;
            if (r0 < r1) {
                // dst is contiguous (supports_op), so flat row r of the batch is at r * nb1.
                check(takane_matmul_q8_0_rows(w, r0, r1, m, q, (int64_t) row_q, nullptr, nullptr, 0, nullptr,
                                              (float *) dst->data, (int64_t) (dst->nb[1] / sizeof(float)),
                                              scratch, (int64_t) scratch_bytes),
                      "takane_matmul_q8_0_rows", src0);
            }
            chunk = nth == 1 ? nchunk : ggml_threadpool_chunk_add(params->threadpool, 1);
        }
    }

    // dst row i = weight row ids[i], as float32 (the embedding lookup). Rows split over threads.
    static void get_rows(ggml_compute_params * params, ggml_tensor * dst) {
        const ggml_tensor * src0 = dst->src[0];
        const ggml_tensor * src1 = dst->src[1];
        const int64_t nr = ggml_nelements(src1);  // supports_op: src1 is one row of ids
        const takane_weights * w = handle_of(src0);
        for (int64_t i = params->ith * nr / params->nth; i < (params->ith + 1) * nr / params->nth; i++) {
            const int64_t row = *(const int32_t *) ((const char *) src1->data + i * src1->nb[0]);
            GGML_ASSERT(row >= 0 && row < src0->ne[1]);
            check(takane_weights_dequantize_rows(w, row, row + 1, (float *) ((char *) dst->data + i * dst->nb[1]),
                                                 src0->ne[0]),
                  "takane_weights_dequantize_rows", src0);
        }
    }
};

takane_traits g_traits;  // stateless: one object serves every tensor (tensor->extra)

// ---- buffer: a plain CPU buffer whose Q1_0 tensors are repacked on upload --------------------

ggml_status buffer_init_tensor(ggml_backend_buffer_t, ggml_tensor * t) {
    // Views (of a weight) never reach this buffer's ops; only whole Q1_0 matrices get traits.
    t->extra = is_takane_weight(t) && t->view_src == nullptr ? (void *) &g_traits : nullptr;
    return GGML_STATUS_SUCCESS;
}

void buffer_set_tensor(ggml_backend_buffer_t buffer, ggml_tensor * t, const void * data, size_t offset, size_t size) {
    if (t->extra != &g_traits) {  // not a weight of ours (nothing else is placed here today)
        memcpy((char *) t->data + offset, data, size);
        return;
    }
    // A handle is built from the whole matrix at once: ggml's model loader uploads a weight of a
    // non-host buffer in one call (so do the other repacking buffer types, which assert the same).
    GGML_ASSERT(offset == 0 && size == ggml_nbytes(t));
    const int64_t k = t->ne[0], n = t->ne[1];
    const size_t bytes = ggml_backend_buft_get_alloc_size(buffer->buft, t);
    takane_weights * h = nullptr;
    check(takane_weights_from_q1_0(n, k, data, (int64_t) t->nb[1], t->data, (int64_t) bytes, &h),
          "takane_weights_from_q1_0 (repacking the weight)", t);
    GGML_ASSERT(h == (takane_weights *) t->data);  // the handle lives in the tensor's memory
}

const char * buft_get_name(ggml_backend_buffer_type_t) { return "CPU_TAKANE"; }

ggml_backend_buffer_t buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    // ggml's CPU buffer (64-byte aligned base on x86) with the tensor entries replaced; memory,
    // freeing and clearing stay ggml's.
    ggml_backend_buffer_t buffer = ggml_backend_buft_alloc_buffer(ggml_backend_cpu_buffer_type(), size);
    if (buffer == nullptr) {
        return nullptr;
    }
    buffer->buft               = buft;
    buffer->iface.init_tensor  = buffer_init_tensor;
    buffer->iface.set_tensor   = buffer_set_tensor;
    buffer->iface.get_tensor   = nullptr;  // the bytes are a takane handle, not Q1_0 any more
    buffer->iface.cpy_tensor   = nullptr;
    return buffer;
}

size_t buft_get_alignment(ggml_backend_buffer_type_t) { return TAKANE_ALIGN; }

size_t buft_get_alloc_size(ggml_backend_buffer_type_t, const ggml_tensor * t) {
    if (is_takane_weight(t)) {
        int64_t bytes = 0;
        check(takane_weights_q1_0_size(t->ne[1], t->ne[0], &bytes), "takane_weights_q1_0_size", t);
        return (size_t) bytes;
    }
    return ggml_nbytes(t);
}

class takane_extra_buffer_type : public ggml::cpu::extra_buffer_type {
  public:
    bool supports_op(ggml_backend_dev_t, const ggml_tensor * op) override {
        const ggml_tensor * src0 = op->src[0];
        const ggml_tensor * src1 = op->src[1];
        if (src0 == nullptr || src1 == nullptr || !ours(src0) || !is_takane_weight(src0) || op->type != GGML_TYPE_F32) {
            return false;
        }
        if (src1->buffer && !ggml_backend_buft_is_host(src1->buffer->buft)) {
            return false;  // activations must be readable by this thread
        }
        if (op->op == GGML_OP_MUL_MAT) {
            // F32 activations with contiguous rows (any strides between rows and batches);
            // dst contiguous so that the flat batch index r maps to row r of dst.
            return src1->type == GGML_TYPE_F32 && src1->nb[0] == sizeof(float) && ggml_is_contiguous(op) &&
                   op->ne[0] == src0->ne[1];
        }
        if (op->op == GGML_OP_GET_ROWS) {
            // With a 2-D src0, ggml's get_rows has ids of shape [n] (ne11 == ne02 == 1, ne12 == ne03 == 1).
            return src1->type == GGML_TYPE_I32 && ggml_nrows(src1) == 1 && op->nb[0] == sizeof(float);
        }
        return false;
    }

    ggml::cpu::tensor_traits * get_tensor_traits(const ggml_tensor * op) override {
        // Called for every node of every graph: anything not ours returns nullptr quickly.
        if ((op->op == GGML_OP_MUL_MAT || op->op == GGML_OP_GET_ROWS) && op->src[0] && ours(op->src[0]) &&
            op->src[0]->extra == &g_traits) {
            return &g_traits;
        }
        return nullptr;
    }

  private:
    static bool ours(const ggml_tensor * t) {
        return t->buffer != nullptr && t->buffer->buft == ggml_backend_cpu_takane_buffer_type();
    }
};

// The layouts takane_kernels implements must be ggml's: checked once, at registration.
bool compatible() {
    if (takane_abi_version() != TAKANE_ABI_VERSION) {
        GGML_LOG_WARN("CPU_TAKANE: takane_kernels library ABI %u, header %d: not registered\n", takane_abi_version(),
                      TAKANE_ABI_VERSION);
        return false;
    }
    if (ggml_blck_size(GGML_TYPE_Q1_0) != TAKANE_Q1_0_BLOCK || ggml_type_size(GGML_TYPE_Q1_0) != TAKANE_Q1_0_BLOCK_BYTES ||
        ggml_blck_size(GGML_TYPE_Q8_0) != TAKANE_Q8_0_BLOCK || ggml_type_size(GGML_TYPE_Q8_0) != TAKANE_Q8_0_BLOCK_BYTES) {
        GGML_LOG_WARN("CPU_TAKANE: ggml's Q1_0 / Q8_0 blocks differ from takane_kernels': not registered\n");
        return false;
    }
    return true;
}

}  // namespace

ggml_backend_buffer_type_t ggml_backend_cpu_takane_buffer_type(void) {
    static const bool ok = compatible();
    static ggml_backend_buffer_type buft = {
        /* .iface   = */ {
            /* .get_name       = */ buft_get_name,
            /* .alloc_buffer   = */ buft_alloc_buffer,
            /* .get_alignment  = */ buft_get_alignment,
            /* .get_max_size   = */ nullptr,  // SIZE_MAX
            /* .get_alloc_size = */ buft_get_alloc_size,
            /* .is_host        = */ nullptr,  // not host: the bytes are not ggml's layout
        },
        /* .device  = */ ggml_backend_reg_dev_get(ggml_backend_cpu_reg(), 0),
        /* .context = */ new takane_extra_buffer_type(),
    };
    return ok ? &buft : nullptr;
}
