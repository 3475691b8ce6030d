"""The limit the speed benchmark measures against: the best float32 rate this machine reaches.

Measured as the best over several matmul sizes and the convolution shapes of wide_resnet50_2 at
256 px (batch 8), with all the threads the benchmark uses. On a CPU the theoretical peak is also read
off lscpu where it can be (cores x clock x FLOPs per cycle from the vector and FMA flags); the clock
a VM reports is often the base clock, so boosting can put measured rates above it.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from systems import timed

MATMUL_SIZES = (1024, 2048, 4096)
# (in channels, out channels, kernel, side) of wide_resnet50_2's heaviest convolutions at 256 px
CONV_SHAPES = ((128, 128, 3, 64), (256, 256, 3, 32), (512, 512, 3, 16), (256, 128, 1, 64), (1024, 512, 1, 16))


@dataclass
class Peak:
    measured: float  # FLOP/s, the best of every probe
    probes: list[tuple[str, float]]  # (what, FLOP/s)
    theoretical: float | None
    theoretical_note: str

    def share(self, rate: float) -> str:
        """`rate` as a share of the measured peak; above 100 % says the estimate is wrong."""
        percent = 100 * rate / self.measured
        if percent <= 100:
            return f"{percent:.0f} %"
        return f"{percent:.0f} % (above the measured limit: that limit is an underestimate)"


def _best(fn, device: torch.device, repeats: int) -> float:
    fn()
    return min(timed(fn, device) for _ in range(repeats))


def probes(
    device: torch.device, dtype: torch.dtype = torch.float32, repeats: int = 3
) -> list[tuple[str, float]]:
    rates = []
    for n in MATMUL_SIZES:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        rates.append((f"matmul {n}x{n}", 2 * n**3 / _best(lambda a=a, b=b: a @ b, device, repeats)))
    for c_in, c_out, k, side in CONV_SHAPES:
        x = torch.randn(8, c_in, side, side, device=device, dtype=dtype)
        w = torch.randn(c_out, c_in, k, k, device=device, dtype=dtype)
        flops = 2 * 8 * c_out * side * side * c_in * k * k

        def conv(x=x, w=w, k=k) -> torch.Tensor:
            with torch.no_grad():
                return F.conv2d(x, w, padding=k // 2)

        rates.append(
            (f"conv {c_in}->{c_out} {k}x{k} at {side}x{side}, batch 8", flops / _best(conv, device, repeats))
        )
    return rates


def theoretical_cpu(threads: int) -> tuple[float | None, str]:
    """cores x clock x float32 FLOPs per cycle, from lscpu; None where lscpu does not tell enough."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, "lscpu is not available"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("Flags", "").split())
    if "fma" not in flags:
        return None, "no FMA flag: FLOPs per cycle unknown"
    amd = fields.get("Vendor ID") == "AuthenticAMD"
    wide = "avx512f" in flags and not amd  # AMD Zen 4 runs AVX-512 on 256-bit units
    per_cycle = 2 * 2 * (16 if wide else 8)  # two FMA units x 2 FLOPs x float32 lanes
    units = "2 x 512-bit FMA" if wide else "2 x 256-bit FMA"
    clock, source = _clock_ghz(fields)
    if clock is None:
        return None, f"{units} per core, but no clock readable"
    cores = min(threads, int(fields.get("CPU(s)", threads)))
    note = f"{cores} cores x {clock:.2f} GHz ({source}) x {per_cycle} FLOP/cycle ({units}, from the flags)"
    return cores * clock * 1e9 * per_cycle, note


def _clock_ghz(fields: dict[str, str]) -> tuple[float | None, str]:
    if "CPU max MHz" in fields:
        return float(fields["CPU max MHz"]) / 1000, "lscpu max"
    match = re.search(r"@\s*([\d.]+)\s*GHz", fields.get("Model name", ""))
    if match:
        return float(match.group(1)), "model name, base clock"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            mhz = next(float(line.split(":")[1]) for line in cpuinfo if line.startswith("cpu MHz"))
        return mhz / 1000, "/proc/cpuinfo, the clock the VM reports"
    except (OSError, StopIteration, ValueError):
        return None, ""


def machine_peak(device: torch.device, threads: int) -> Peak:
    rates = probes(device)
    if device.type == "cpu":
        theoretical, note = theoretical_cpu(threads)
    else:
        theoretical, note = None, "not read for accelerators"
    return Peak(max(rate for _, rate in rates), rates, theoretical, note)


def describe(peak: Peak) -> list[str]:
    """Markdown lines: the probes, the measured limit and the theoretical one."""
    lines = ["| probe (float32) | GFLOP/s |", "|---|---|"]
    lines += [f"| {what} | {rate / 1e9:.1f} |" for what, rate in peak.probes]
    lines.append(f"\nMeasured limit (best probe): **{peak.measured / 1e9:.1f} GFLOP/s**.")
    if peak.theoretical is None:
        lines.append(f"Theoretical peak: not given ({peak.theoretical_note}).")
    else:
        lines.append(f"Theoretical peak: {peak.theoretical / 1e9:.1f} GFLOP/s = {peak.theoretical_note}.")
        if peak.measured > peak.theoretical:
            lines.append(
                "The measured limit is above it: the cores run faster than the clock read (boost), so the "
                "theoretical figure is an underestimate here."
            )
    return lines
