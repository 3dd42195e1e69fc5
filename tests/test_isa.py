"""ISA detection, forcing, the env override, and the version/path helpers."""

import os
import platform
import shlex
import subprocess
import sys

import numpy as np
import pytest

import takane_kernels as tk

from conftest import assert_ran

X86 = ("x86_64", "AMD64")
ARM64 = ("aarch64", "arm64")


def test_compiled_supported_active_are_consistent():
    compiled, supported = tk.isa.compiled(), tk.isa.supported()
    assert "scalar" in supported
    assert set(supported) <= set(compiled)
    assert tk.isa.active() in supported
    if platform.machine() in X86:
        assert {"scalar", "avx2", "avx512"} <= set(compiled)
    elif platform.machine() in ARM64:
        assert compiled == ["neon", "scalar"]  # no x86 kernel file is built for aarch64


def test_default_isa_is_the_expected_one():
    """CI runs this under qemu CPU models and sets TAKANE_EXPECT_ISA to what each must pick."""
    expected = os.environ.get("TAKANE_EXPECT_ISA")
    if "TAKANE_ISA" in os.environ:
        pytest.skip("TAKANE_ISA overrides the default choice in this run")
    assert tk.isa.active() == tk.isa.supported()[0]  # the best supported one
    if expected:
        assert tk.isa.active() == expected, f"picked {tk.isa.active()}, expected {expected}"


def test_supported_matches_cpu_flags():
    if platform.machine() in ARM64:
        # Advanced SIMD is baseline on aarch64: neon is always supported, with no run-time
        # check. Natively /proc/cpuinfo lists it as "asimd"; under qemu-user the file is
        # the x86 host's (no "Features" line), so there the CPU cannot be compared.
        assert tk.isa.supported() == ["neon", "scalar"]
        try:
            cpuinfo = open("/proc/cpuinfo").read()
        except OSError:
            return
        features = [line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                    if line.startswith("Features")]
        for cpu_features in features:
            assert "asimd" in cpu_features
        return
    if platform.machine() not in X86:
        assert tk.isa.supported() == ["scalar"]  # no SIMD kernel set for this architecture
        return
    try:
        flags = set(open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split(":")[1].split())
    except (OSError, IndexError):
        pytest.skip("no /proc/cpuinfo flags on this platform")
    has512 = {"avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq"} <= flags
    # qemu's CPU models do not show in /proc/cpuinfo (it is the host's, AVX-512 and all):
    # only the host CPU can be compared with it. Under qemu (TAKANE_EXPECT_ISA set) the
    # ISA the model makes the library pick is checked by test_default_isa instead.
    under_qemu = os.environ.get("TAKANE_EXPECT_ISA") is not None and "emulated" not in tk.version_info()
    if "emulated" in tk.version_info():  # the SIMDe test build runs avx512 on any CPU
        assert "avx512" in tk.isa.supported()
    elif not under_qemu:
        assert ("avx512" in tk.isa.supported()) == has512
    if os.environ.get("TAKANE_EXPECT_ISA") is None:
        assert ("avx2" in tk.isa.supported()) == ({"avx2", "fma", "popcnt"} <= flags)
    else:
        assert set(tk.isa.supported()) <= {"scalar", "avx2", "avx512"}


@pytest.mark.parametrize("name", tk.isa.supported())
def test_force_is_a_context_manager_and_restores(name):
    before = tk.isa.active()
    with tk.isa.force(name) as f:
        assert tk.isa.active() == name == f.name
        tk.pack_bits(np.ones(3))
        assert_ran(name)
    assert tk.isa.active() == before


def test_force_auto():
    with tk.isa.force("scalar"):
        with tk.isa.force("auto"):
            assert tk.isa.active() == tk.isa.supported()[0]
        assert tk.isa.active() == "scalar"


def _run(code, **env):
    """Run code in a child interpreter, without the parent's TAKANE_ISA.

    Under user-mode emulation (.ci/aarch64.sh runs the suite with qemu-aarch64 and no
    binfmt_misc registration) the host kernel cannot exec the aarch64 sys.executable:
    TAKANE_TEST_EMULATOR names the command to run it with, e.g. "qemu-aarch64" (the
    child inherits QEMU_LD_PREFIX from the environment).
    """
    full = {k: v for k, v in os.environ.items() if k != "TAKANE_ISA"}
    full.update(env)
    cmd = shlex.split(os.environ.get("TAKANE_TEST_EMULATOR", "")) + [sys.executable, "-c", code]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", tk.isa.supported())
def test_env_override(name):
    r = _run(
        "import numpy as np, takane_kernels as tk; tk.pack_bits(np.ones(3));"
        "print(tk.isa.active(), tk.isa.last_used())",
        TAKANE_ISA=name,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [name, name]


@pytest.mark.parametrize("bad", ["sse9", "neon" if "neon" not in tk.isa.supported() else "avx512"])
def test_bad_env_override_is_an_error_until_forced(bad):
    if bad in tk.isa.supported():
        pytest.skip(f"{bad} is supported here")
    r = _run(
        "import numpy as np, takane_kernels as tk\n"
        "try:\n    tk.pack_bits(np.ones(3)); print('no error')\n"
        "except ValueError as e:\n    print('ValueError', 'TAKANE_ISA' in str(e))\n"
        "tk.isa.force('scalar'); tk.pack_bits(np.ones(3)); print(tk.isa.last_used())",
        TAKANE_ISA=bad,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ValueError", "True", "scalar"]


def test_version_and_paths():
    assert tk.__version__ == "0.2.0"
    assert tk.version_info().startswith(tk.__version__)
    assert tk._lib.takane_abi_version() == tk._lib.TAKANE_ABI_VERSION == 1
    assert os.path.isfile(os.path.join(tk.get_include(), "takane", "takane.h"))
    assert os.path.isfile(tk.get_library())


def test_status_strings_cover_every_status():
    for value in range(13):
        s = tk._ffi.string(tk._lib.takane_status_string(value)).decode()
        assert s and s != "unknown status"
    assert tk._ffi.string(tk._lib.takane_status_string(999)).decode() == "unknown status"


def test_shared_library_exports_only_takane_symbols():
    import ctypes

    lib = ctypes.CDLL(tk.get_library())
    assert lib.takane_abi_version() == 1
    # the framework's internal helpers are hidden
    with pytest.raises(AttributeError):
        lib.takane_select_kernels  # noqa: B018


OPS = {"matmul", "pack", "linear", "wfloat", "q8_0", "ternary"}


def test_kernels_per_op_are_reported_honestly():
    """Every compiled set names the code each op runs; a borrowed op says "scalar"."""
    for name in tk.isa.compiled():
        k = tk.isa.kernels(name)
        assert set(k) == OPS, k
        if name == "scalar":
            assert set(k.values()) == {"scalar"}
        elif name in ("avx2", "avx512"):
            assert set(k.values()) == {name}  # x86 sets own every op
        else:  # neon: own products and W1A8, the portable layer epilogues and W1A-float
            assert k["matmul"] == k["pack"] == "neon"
            assert k["linear"] == k["wfloat"] == "scalar"
            assert k["q8_0"] in ("neon", "neon+sdot")
            assert k["ternary"] == "neon"
    assert tk.isa.kernels() == tk.isa.kernels(tk.isa.active())
    missing = [n for n in tk.isa.NAMES if n not in tk.isa.compiled()]
    for n in missing:
        with pytest.raises(ValueError, match="not compiled"):
            tk.isa.kernels(n)


@pytest.mark.skipif(platform.machine() not in ARM64, reason="the NEON W1A8 variants exist on aarch64 only")
def test_neon_dotprod_can_be_turned_off():
    """TAKANE_NEON_DOTPROD=0 runs the plain NEON W1A8 path on any CPU; results agree with
    the reference either way (the sums are exact)."""
    code = (
        "import numpy as np, takane_kernels as tk; from takane_kernels import reference as ref\n"
        "rng = np.random.default_rng(0); w = tk.pack_weights(rng.standard_normal((24, 320)), group_size=64)\n"
        "x = rng.standard_normal((3, 320)).astype(np.float32)\n"
        "with tk.isa.force('neon'):\n"
        "    y = tk.binary_weight_matmul(x, w, activations='q8_0'); assert tk.isa.last_used() == 'neon'\n"
        "err = np.abs(y - ref.binary_weight_matmul(x, w, activations='q8_0'))\n"
        "assert (err <= ref.binary_weight_matmul_error_bound(x, w, activations='q8_0')).all()\n"
        "print(tk.isa.kernels('neon')['q8_0'])"
    )
    r = _run(code, TAKANE_NEON_DOTPROD="0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["neon"]
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] in ("neon", "neon+sdot")
