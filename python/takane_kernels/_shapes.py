"""One list of shapes for tests, benchmarks and the main job (docs/development.md, docs/performance.md)."""

# K values that hit every word edge: 1 bit, one word +-1, two words +-1, 8 words +-1, ...
TEST_K = (1, 63, 64, 65, 127, 128, 129, 511, 513, 4097)
# M and N at and around every register-tile edge (tiles are at most 8 x 8) and zero
TEST_MN = (0, 1, 2, 3, 4, 5, 7, 8, 9, 17, 33)

# (M, N, K): GEMV, LLM prefill, square, LLM MLP, conv-as-GEMM
BENCH_SHAPES = (
    (1, 4096, 4096),
    (64, 4096, 4096),
    (256, 4096, 4096),
    (1024, 1024, 1024),
    (8, 11008, 4096),
    (3136, 64, 576),
)
