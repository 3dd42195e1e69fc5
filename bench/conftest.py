"""pytest-benchmark setup: record the ISAs in the machine info of every saved run."""

import takane_kernels as tk


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["takane_kernels"] = {
        "version": tk.version_info(),
        "isa_compiled": tk.isa.compiled(),
        "isa_supported": tk.isa.supported(),
        "isa_active": tk.isa.active(),
    }
