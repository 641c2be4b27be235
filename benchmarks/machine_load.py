"""How busy the machine was while one timed sample ran, and what CPU it ran on.

Standard library only: the PyTorch-side worker of `benchmarks.compare_reference` imports it too,
from a Python environment that has torch but neither TensorFlow nor absl.

A sample is "quiet" when other processes (and the hypervisor, through steal time) used little of the
machine while it ran. From /proc/stat, over the sample's wall time W on N CPUs:

    busy      = user + nice + system + irq + softirq   (all CPUs, seconds)
    others    = max(0, busy - own process CPU time) + steal
    other_load = others / (W * N)                      (0: nobody else ran; 1: every CPU was taken)

Our own process's CPU time comes from `time.process_time()` (all its threads), so a benchmark that
keeps both cores busy is not "loud" by itself.
"""

import os
import platform
import statistics
import subprocess
import time

# ISA extensions that decide convolution / matmul speed on x86 and ARM CPUs.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "asimd", "sve", "sve2", "bf16")
_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def read_cpu_times(path: str = "/proc/stat") -> dict | None:
    """Aggregate CPU times in seconds since boot by kind (user, idle, steal, ...), or None where
    /proc/stat does not exist (then samples have no load figure and none counts as quiet)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("cpu "):
                    ticks = [int(v) for v in line.split()[1:1 + len(_STAT_FIELDS)]]
                    ticks += [0] * (len(_STAT_FIELDS) - len(ticks))
                    hertz = os.sysconf("SC_CLK_TCK")
                    return {name: value / hertz for name, value in zip(_STAT_FIELDS, ticks)}
    except OSError:
        return None
    return None


def other_load(before: dict | None, after: dict | None, own_cpu_seconds: float, wall_seconds: float,
               num_cpus: int) -> dict:
    """The load of everything but this process between two `read_cpu_times` readings."""
    if before is None or after is None or wall_seconds <= 0:
        return dict(other_load=None, steal_fraction=None, machine_busy_fraction=None)
    delta = {name: after[name] - before[name] for name in _STAT_FIELDS}
    busy = delta["user"] + delta["nice"] + delta["system"] + delta["irq"] + delta["softirq"]
    capacity = wall_seconds * num_cpus
    others = max(0.0, busy - own_cpu_seconds) + delta["steal"]
    return dict(other_load=min(1.0, others / capacity), steal_fraction=min(1.0, delta["steal"] / capacity),
                machine_busy_fraction=min(1.0, (busy + delta["steal"]) / capacity))


def measure(fn, num_cpus: int | None = None) -> dict:
    """Runs `fn()` once: its wall and process CPU seconds and the other load meanwhile, plus `result`."""
    num_cpus = num_cpus or os.cpu_count() or 1
    before = read_cpu_times()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = read_cpu_times()
    return dict(wall_seconds=wall, cpu_seconds=cpu, result=result,
                **other_load(before, after, cpu, wall, num_cpus))


def is_quiet(sample: dict, max_other_load: float) -> bool:
    """A sample with a known other load at or under the threshold."""
    load = sample.get("other_load")
    return load is not None and load <= max_other_load


def summarize(values) -> dict | None:
    """median / min / max / count of a list of seconds, or None when empty."""
    values = list(values)
    if not values:
        return None
    return dict(median=statistics.median(values), min=min(values), max=max(values), count=len(values))


def cpu_description() -> dict:
    """CPU model, CPU count, which of `ISA_FLAGS` the CPU has, and `lscpu`'s summary when present."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    lscpu = None
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        wanted = ("Architecture", "Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket",
                  "Hypervisor vendor", "L2 cache", "L3 cache")
        lscpu = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in output.splitlines())
                 if k.strip() in wanted}
    except (OSError, subprocess.SubprocessError):
        pass
    return dict(model=model or platform.processor() or "unknown", num_cpus=os.cpu_count(),
                isa_flags=[flag for flag in ISA_FLAGS if flag in flags], lscpu=lscpu)
