// takane_kernels as a ggml CPU extra buffer type ("CPU_TAKANE"). Part of takane_kernels
// (integrations/llama.cpp/); build.sh copies this file into ggml/src/ggml-cpu/takane/.
#pragma once

#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// The buffer type, or NULL when it cannot run here (the takane_kernels library found at run
// time has another ABI than the header this file was compiled with, or ggml's Q1_0 / Q8_0
// block layouts differ from the ones takane_kernels implements). Q1_0 weight matrices placed
// in it are repacked once at load into takane_kernels' own layout, inside the tensor's memory.
ggml_backend_buffer_type_t ggml_backend_cpu_takane_buffer_type(void);

#ifdef __cplusplus
}
#endif
