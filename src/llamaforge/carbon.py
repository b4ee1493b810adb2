"""Energy and CO2 accounting: the paper's Table 2 and our own runs (SPEC §12).

``tCO2eq = device-hours × power (kW) × PUE × grid intensity (kg/kWh) / 1000``

The Llama 2 paper prints neither factor; PUE 1.1 and 0.385 kg CO2eq/kWh are Llama 1's, and
they reproduce every row of Table 2 (see ``paper_table``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Callable

PUE = 1.1  # SPEC §12 (Llama 1's power usage effectiveness)
CARBON_INTENSITY_KG_PER_KWH = 0.385  # SPEC §12 (Llama 1's US grid average)

# Fallback power when nothing can be measured. A GPU counts at 400 W, the A100-80GB SXM TDP
# that Table 2 uses for 7B/13B/70B. A CPU counts at 65 W, the rated TDP of a mainstream
# desktop CPU package: too much for a 2-core cloud VM slice, too little for a server socket,
# so pass watts= when you know your machine.
DEFAULT_WATTS = {"cuda": 400.0, "cpu": 65.0}

# SPEC §12, Table 2: (model, GPU-hours, power per GPU in W).
PAPER_TABLE2 = (
    ("7B", 184_320, 400),
    ("13B", 368_640, 400),
    ("34B", 1_038_336, 350),
    ("70B", 1_720_320, 400),
)

ENERGY_KEYS = ("device_hours", "kwh", "tco2eq")


def facility_kwh(device_hours: float, power_watts: float, pue: float = PUE) -> float:
    """Energy drawn from the grid: device energy times the data centre's PUE."""
    return device_hours * power_watts / 1000 * pue


def tco2eq(
    gpu_hours: float,
    power_watts: float,
    pue: float = PUE,
    carbon_intensity_kg_per_kwh: float = CARBON_INTENSITY_KG_PER_KWH,
) -> float:
    """Tonnes of CO2eq for ``gpu_hours`` at ``power_watts`` per device (SPEC §12).

    Decimal arguments give an exact Decimal result (``paper_table`` relies on it).
    """
    return facility_kwh(gpu_hours, power_watts, pue) * carbon_intensity_kg_per_kwh / 1000


@dataclass(frozen=True)
class CarbonRow:
    """One row of Table 2; ``power_watts`` is None on the total row."""

    model: str
    gpu_hours: int
    power_watts: int | None
    tco2eq: float


def paper_table() -> list[CarbonRow]:
    """Table 2 of the paper, four models and the total, exactly as printed (SPEC §12).

    The exact values are 31.223808, 62.447616, 153.90735 and 291.422208 t. The paper's
    rows are these **truncated** to two decimals (rounding would print 62.45 and 153.91).
    Its total, 539.00, is the sum of the exact values, 539.000982, cut to two decimals the
    same way (rounding gives 539.00 as well); adding the printed rows gives 538.98 instead.
    Arithmetic is done in Decimal so that truncation cannot fall on the wrong side of a
    binary float.
    """
    pue, intensity = Decimal(str(PUE)), Decimal(str(CARBON_INTENSITY_KG_PER_KWH))
    rows, exact_total = [], Decimal(0)
    for model, gpu_hours, watts in PAPER_TABLE2:
        exact = tco2eq(Decimal(gpu_hours), Decimal(watts), pue, intensity)
        exact_total += exact
        rows.append(CarbonRow(model, gpu_hours, watts, _truncate_2dp(exact)))
    total_hours = sum(gpu_hours for _, gpu_hours, _ in PAPER_TABLE2)
    rows.append(CarbonRow("total", total_hours, None, _truncate_2dp(exact_total)))
    return rows


def _truncate_2dp(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_DOWN))


def format_table(rows: list[CarbonRow]) -> str:
    """Rows as an aligned text table, GPU-hours with thousands separators."""
    header = ("model", "GPU-hours", "power per GPU", "tCO2eq")
    cells = [header] + [
        (
            row.model,
            f"{row.gpu_hours:,}",
            "" if row.power_watts is None else f"{row.power_watts} W",
            f"{row.tco2eq:.2f}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths))
        )
        for line in cells
    ]
    return "\n".join(lines)


def read_nvidia_smi_watts() -> list[float]:
    """Current power draw of each visible GPU, in W, from ``nvidia-smi``.

    Raises OSError when nvidia-smi is missing or fails, ValueError on output it cannot parse.
    nvidia-smi ignores CUDA_VISIBLE_DEVICES, so numeric device lists are passed on as --id.
    """
    executable = shutil.which("nvidia-smi")
    if executable is None:
        raise OSError("nvidia-smi not found on PATH")
    command = [executable, "--query-gpu=power.draw", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and all(part.strip().isdigit() for part in visible.split(",")):
        command.append(f"--id={visible}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise OSError(f"nvidia-smi failed: {result.stderr.strip() or result.returncode}")
    watts = [float(line) for line in result.stdout.split() if line.strip()]
    if not watts:
        raise ValueError("nvidia-smi reported no GPUs")
    return watts


@dataclass(frozen=True)
class RunEnergy:
    """Energy of one run; ``as_dict`` of it is the ``energy`` section of a run manifest.

    ``kwh`` is facility energy (device energy × PUE), the quantity the grid intensity
    applies to.
    """

    device: str
    n_devices: int
    device_hours: float
    power_watts: float  # mean power per device
    power_source: str  # "nvidia-smi" (measured) or "configured"
    pue: float
    intensity_kg_per_kwh: float
    kwh: float
    tco2eq: float


class EnergyMeter:
    """Measures a run's device-hours and turns them into kWh and tCO2eq.

    On ``cuda`` without ``watts``, the power is sampled from nvidia-smi in a background
    thread (mean over the run); otherwise ``watts`` (or ``DEFAULT_WATTS[device]``) per
    device is assumed. Use as ``with EnergyMeter("cuda", n_devices=8) as meter: ...``.
    """

    def __init__(
        self,
        device: str = "cpu",
        n_devices: int = 1,
        watts: float | None = None,
        pue: float = PUE,
        intensity: float = CARBON_INTENSITY_KG_PER_KWH,
        *,
        sample_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if device not in DEFAULT_WATTS:
            raise ValueError(f"device must be one of {sorted(DEFAULT_WATTS)}, got {device!r}")
        if n_devices < 1:
            raise ValueError(f"n_devices must be at least 1, got {n_devices}")
        self.device = device
        self.n_devices = n_devices
        self.watts = watts
        self.pue = pue
        self.intensity = intensity
        self.sample_interval_s = sample_interval_s
        self.clock = clock
        self.power_source = "configured"
        self._samples: list[float] = []
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> EnergyMeter:
        self._started_at, self._stopped_at = self.clock(), None
        self._samples = []
        if self.device == "cuda" and self.watts is None:
            try:
                self._sample()
            except (OSError, ValueError, subprocess.SubprocessError):
                self.power_source = "configured"
            else:
                self.power_source = "nvidia-smi"
                self._stop_sampling.clear()
                self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
                self._sampler.start()
        return self

    def stop(self) -> RunEnergy:
        if self._started_at is None:
            raise RuntimeError("EnergyMeter.stop() called before start()")
        if self._sampler is not None:
            self._stop_sampling.set()
            self._sampler.join()
            self._sampler = None
        self._stopped_at = self.clock()
        return self.result()

    def _sample(self) -> None:
        readings = read_nvidia_smi_watts()
        self._samples.append(sum(readings) / len(readings))

    def _sample_loop(self) -> None:
        while not self._stop_sampling.wait(self.sample_interval_s):
            try:
                self._sample()
            except (OSError, ValueError, subprocess.SubprocessError):
                pass  # a missed reading; the mean of the others still stands

    def result(self) -> RunEnergy:
        """Energy so far (up to now while running, up to stop() after)."""
        if self._started_at is None:
            raise RuntimeError("EnergyMeter.result() called before start()")
        end = self._stopped_at if self._stopped_at is not None else self.clock()
        device_hours = (end - self._started_at) / 3600 * self.n_devices
        if self.power_source == "nvidia-smi":
            power = sum(self._samples) / len(self._samples)
        else:
            power = self.watts if self.watts is not None else DEFAULT_WATTS[self.device]
        kwh = facility_kwh(device_hours, power, self.pue)
        return RunEnergy(
            device=self.device,
            n_devices=self.n_devices,
            device_hours=device_hours,
            power_watts=power,
            power_source=self.power_source,
            pue=self.pue,
            intensity_kg_per_kwh=self.intensity,
            kwh=kwh,
            tco2eq=tco2eq(device_hours, power, self.pue, self.intensity),
        )

    def as_dict(self) -> dict:
        return asdict(self.result())

    def __enter__(self) -> EnergyMeter:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def find_manifests(paths) -> list[Path]:
    """``manifest.json`` files: the given files, and those found recursively in given folders."""
    manifests: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob("manifest.json"))
            if not found:
                raise ValueError(f"no manifest.json under {path}; is it a run folder?")
            manifests += found
        elif path.is_file():
            manifests.append(path)
        else:
            raise ValueError(f"{path} does not exist")
    return manifests


def manifest_energy(paths, *, missing_ok: bool = False) -> list[dict]:
    """The ``energy`` section of each run manifest under ``paths``, one row per run (stage).

    Each row is the section plus ``"manifest"`` (its path). A manifest that is not JSON or
    has no valid ``energy`` section raises ValueError naming it; with ``missing_ok`` it is
    skipped instead (a stage still starting, or one that does not meter), and so is a
    folder without manifests.
    """
    try:
        manifests = find_manifests(paths)
    except ValueError:
        if missing_ok:
            return []
        raise
    rows = []
    for manifest in manifests:
        try:
            rows.append({"manifest": str(manifest), **_energy_section(manifest)})
        except ValueError:
            if not missing_ok:
                raise
    return rows


def _energy_section(manifest: Path) -> dict:
    try:
        content = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{manifest} is not valid JSON: {error}") from None
    energy = content.get("energy") if isinstance(content, dict) else None
    if not isinstance(energy, dict):
        raise ValueError(f"{manifest} has no 'energy' section; was the run recorded with an EnergyMeter?")
    for key in ENERGY_KEYS:
        value = energy.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{manifest}: energy.{key} should be a number, got {value!r}")
    return energy


def sum_energy(rows: list[dict]) -> dict:
    """``{"manifests": n, "device_hours", "kwh", "tco2eq"}`` summed over ``manifest_energy`` rows."""
    return {"manifests": len(rows), **{key: float(sum(row[key] for row in rows)) for key in ENERGY_KEYS}}


def total_from_manifests(paths) -> dict:
    """Sum the ``energy`` sections of run manifests (``paths``: manifest files or run folders).

    Returns ``{"manifests": n, "device_hours": ..., "kwh": ..., "tco2eq": ...}``. A folder without
    manifests, or a manifest without a valid ``energy`` section, raises ValueError naming it.
    """
    return sum_energy(manifest_energy(paths))


def format_runs(rows: list[dict], root: Path | None = None) -> str:
    """Per-run rows and the pipeline total as an aligned text table."""
    def name(row: dict) -> str:
        folder = Path(row["manifest"]).parent
        if root is not None and folder.is_relative_to(root):
            return str(folder.relative_to(root)) or "."
        return str(folder)

    total = sum_energy(rows)
    header = ("run", "device", "device-hours", "W", "kWh", "kg CO2eq")
    cells = [header] + [
        (name(r), f"{r.get('device', '?')}x{r.get('n_devices', 1)}", f"{r['device_hours']:.4f}",
         f"{r.get('power_watts', float('nan')):.0f}", f"{r['kwh']:.4f}", f"{r['tco2eq'] * 1000:.5f}")
        for r in rows
    ] + [("total", "", f"{total['device_hours']:.4f}", "", f"{total['kwh']:.4f}", f"{total['tco2eq'] * 1000:.5f}")]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)


def main(argv: list[str] | None = None) -> int:
    """``llamaforge carbon --paper | --gpu-hours H --watts W | RUN_DIR...``"""
    parser = argparse.ArgumentParser(
        prog="llamaforge carbon",
        description="CO2 accounting: the paper's Table 2, a what-if estimate, or the total of "
        "recorded runs. tCO2eq = hours x kW x PUE x kg/kWh / 1000 (SPEC §12).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR",
                        help="run folders (searched recursively for manifest.json)")
    parser.add_argument("--paper", action="store_true", help="print the paper's Table 2")
    parser.add_argument("--gpu-hours", type=float, help="device-hours to estimate for")
    parser.add_argument("--watts", type=float, help="power per device, W")
    parser.add_argument("--pue", type=float, default=PUE, help="power usage effectiveness")
    parser.add_argument("--intensity", type=float, default=CARBON_INTENSITY_KG_PER_KWH,
                        help="grid carbon intensity, kg CO2eq per kWh")
    args = parser.parse_args(argv)

    modes = [bool(args.paper), args.gpu_hours is not None or args.watts is not None,
             bool(args.run_dirs)]
    if sum(modes) != 1:
        parser.error("give exactly one of: --paper, --gpu-hours H --watts W, or RUN_DIR...")

    if args.paper:
        print(format_table(paper_table()))
        print(f"PUE {PUE}, {CARBON_INTENSITY_KG_PER_KWH} kg CO2eq/kWh; rows truncated to "
              "two decimals, total from the exact values (SPEC §12)")
        return 0
    if args.run_dirs:
        try:
            rows = manifest_energy(args.run_dirs)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        total = sum_energy(rows)
        root = Path(args.run_dirs[0]) if len(args.run_dirs) == 1 else None
        print(format_runs(rows, root))
        print(f"{total['manifests']} manifests: {total['device_hours']:,.4f} device-hours, "
              f"{total['kwh']:,.4f} kWh, {total['tco2eq']:.6f} tCO2eq")
        return 0
    if args.gpu_hours is None or args.watts is None:
        parser.error("--gpu-hours and --watts go together")
    tonnes = tco2eq(args.gpu_hours, args.watts, args.pue, args.intensity)
    print(f"{args.gpu_hours:,g} GPU-hours x {args.watts:g} W x PUE {args.pue:g} x "
          f"{args.intensity:g} kg/kWh = {tonnes:,.2f} tCO2eq")
    return 0


if __name__ == "__main__":
    sys.exit(main())
