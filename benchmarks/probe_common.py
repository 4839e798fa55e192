"""What the Triton config probes (triton_fwd_probe.py, triton_bwd_probe.py) share: timing the configs alternately
(GPU time, L2 flushed: the bench's timer) and printing each against the shape's yardstick."""
import torch

from vibe_kernels.layernorm.bench import gpu_ms_host_hidden


def parse_shape(spec: str, default_dtype: str) -> tuple[int, int, torch.dtype]:
    """``MxN`` or ``MxNx<torch dtype name>`` -> (M, N, dtype); ``default_dtype`` names the dtype of a plain MxN."""
    rows, hidden, *named = spec.split("x")
    return int(rows), int(hidden), getattr(torch, named[0] if named else default_dtype)


def time_alternating(launches, repeats: int) -> list[list[float]]:
    """ms samples per launch: ``repeats`` rounds, each timing every launch once in turn."""
    times = [[] for _ in launches]
    for _ in range(repeats):
        for launch, samples in zip(launches, times):
            samples.append(gpu_ms_host_hidden(launch, 10, 40))
    return times


def print_config_times(configs, times, yardstick_ms: float, default) -> None:
    """One line per config: its samples as ms and % of the yardstick, the default config marked."""
    for config, samples in zip(configs, times):
        cells = " ".join(f"{ms:.4f} ({100 * yardstick_ms / ms:.0f}%)" for ms in samples)
        print(f"    {cells}  {config}{'  (default)' if config is default else ''}")

