"""The command-line programs: ``python -m takane_kernels [demo | llm | lm] ...``.

- :mod:`takane_kernels.programs.main`: the main job (self-check, timing against numpy, the
  peers and the popcount peak, the convolution table, a short LLM decode section) and the
  dispatch to the other programs;
- :mod:`takane_kernels.programs.demo`: the accuracy demo (binary MLPs and a conv net on
  handwritten digits; extra ``demo``);
- :mod:`takane_kernels.programs.llm`: the 1-bit LLM decode / prefill table against DRAM
  bandwidth and llama.cpp;
- :mod:`takane_kernels.programs.lm`: a small 1-bit language model trained here (extra ``lm``);
- :mod:`takane_kernels.programs.peers`: adapters for the peers the main job times.

The library never imports this package (``tests/programs/test_programs.py`` checks): programs are
built on the public API, not the other way round.
"""
