"""Carbon accounting: the paper's Table 2 to the printed digit (SPEC §12) and our own runs."""

import json
import os
import stat
from pathlib import Path

import pytest

from llamaforge import carbon


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_paper_rows_and_total_print_exactly_as_in_table_2():
    rows = carbon.paper_table()
    printed = [(row.model, f"{row.gpu_hours:,}", row.power_watts, f"{row.tco2eq:.2f}") for row in rows]
    assert printed == [
        ("7B", "184,320", 400, "31.22"),
        ("13B", "368,640", 400, "62.44"),
        ("34B", "1,038,336", 350, "153.90"),
        ("70B", "1,720,320", 400, "291.42"),
        ("total", "3,311,616", None, "539.00"),
    ]
    # The total is not the sum of the printed (truncated) rows, which is 538.98.
    assert f"{sum(row.tco2eq for row in rows[:4]):.2f}" == "538.98"


def test_paper_rows_are_truncated_not_rounded():
    exact_13b = carbon.tco2eq(368_640, 400)
    exact_34b = carbon.tco2eq(1_038_336, 350)
    assert f"{exact_13b:.2f}" == "62.45" and f"{exact_34b:.2f}" == "153.91"  # rounding
    by_model = {row.model: row.tco2eq for row in carbon.paper_table()}
    assert (by_model["13B"], by_model["34B"]) == (62.44, 153.90)


def test_formatted_table_has_thousands_separators_and_aligned_columns():
    lines = carbon.format_table(carbon.paper_table()).splitlines()
    assert lines[0].split() == ["model", "GPU-hours", "power", "per", "GPU", "tCO2eq"]
    assert lines[3].split() == ["34B", "1,038,336", "350", "W", "153.90"]
    assert lines[5].split() == ["total", "3,311,616", "539.00"]
    assert len({len(line) for line in lines}) == 1


def test_formula_by_hand():
    # 10 h x 0.25 kW x PUE 1.2 = 3 kWh; x 0.5 kg/kWh = 1.5 kg = 0.0015 t
    assert carbon.tco2eq(10, 250, pue=1.2, carbon_intensity_kg_per_kwh=0.5) == pytest.approx(0.0015)
    # Defaults are Llama 1's factors: 184,320 h x 0.4 kW x 1.1 x 0.385 / 1000
    assert carbon.tco2eq(184_320, 400) == pytest.approx(31.223808)


def test_energy_meter_with_configured_watts_and_fake_clock():
    clock = FakeClock()
    meter = carbon.EnergyMeter("cuda", n_devices=2, watts=300, pue=1.1, intensity=0.385, clock=clock)
    with meter:
        clock.now += 1800  # half an hour on two devices
    energy = meter.as_dict()
    assert energy["power_source"] == "configured"
    assert energy["device_hours"] == pytest.approx(1.0)
    assert energy["kwh"] == pytest.approx(0.33)  # 1 h x 0.3 kW x 1.1
    assert energy["tco2eq"] == pytest.approx(0.33 * 0.385 / 1000)
    clock.now += 3600  # stopped: later time does not count
    assert meter.as_dict()["device_hours"] == pytest.approx(1.0)


def test_cpu_defaults_to_the_documented_tdp():
    clock = FakeClock()
    meter = carbon.EnergyMeter("cpu", clock=clock).start()
    clock.now += 3600
    energy = meter.stop()
    assert (energy.power_watts, energy.power_source) == (carbon.DEFAULT_WATTS["cpu"], "configured")
    assert energy.kwh == pytest.approx(carbon.DEFAULT_WATTS["cpu"] / 1000 * 1.1)


def test_without_nvidia_smi_cuda_falls_back_to_configured_power(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    with carbon.EnergyMeter("cuda", clock=FakeClock()) as meter:
        pass
    energy = meter.as_dict()
    assert energy["power_source"] == "configured"
    assert energy["power_watts"] == carbon.DEFAULT_WATTS["cuda"]


def _fake_nvidia_smi(folder, body):
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {folder / 'args.txt'}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_nvidia_smi_power_is_measured_per_device(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "printf '250.5\\n249.5\\n'")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    clock = FakeClock()
    with carbon.EnergyMeter("cuda", n_devices=2, clock=clock, sample_interval_s=0.01) as meter:
        clock.now += 3600
    energy = meter.as_dict()
    assert energy["power_source"] == "nvidia-smi"
    assert energy["power_watts"] == pytest.approx(250.0)
    assert energy["kwh"] == pytest.approx(2 * 0.25 * 1.1)
    args = (tmp_path / "args.txt").read_text().split()
    assert "--query-gpu=power.draw" in args and "--id=2,3" in args


def test_failing_nvidia_smi_falls_back_to_configured_power(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    meter = carbon.EnergyMeter("cuda", clock=FakeClock()).start()
    assert meter.stop().power_source == "configured"


def _write_manifest(folder, energy):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"config": {}, "energy": energy}))


def _energy(device_hours):
    clock = FakeClock()
    with carbon.EnergyMeter("cpu", watts=100, clock=clock) as meter:
        clock.now += device_hours * 3600
    return meter.as_dict()


def test_total_from_manifests_sums_runs_found_recursively(tmp_path):
    _write_manifest(tmp_path / "runs/a/01-pretrain", _energy(2.0))
    _write_manifest(tmp_path / "runs/a/02-sft", _energy(0.5))
    _write_manifest(tmp_path / "runs/b/01-pretrain", _energy(1.5))
    total = carbon.total_from_manifests([tmp_path / "runs/a", tmp_path / "runs/b"])
    assert total["manifests"] == 3
    assert total["device_hours"] == pytest.approx(4.0)
    assert total["kwh"] == pytest.approx(4.0 * 0.1 * 1.1)
    assert total["tco2eq"] == pytest.approx(4.0 * 0.1 * 1.1 * 0.385 / 1000)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"config": {}}), "no 'energy' section"),
        (json.dumps(["energy"]), "no 'energy' section"),
        (json.dumps({"energy": {"device_hours": 1.0, "kwh": "lots", "tco2eq": 0.1}}), "energy.kwh"),
    ],
)
def test_malformed_manifest_is_named_in_the_error(tmp_path, content, message):
    _write_manifest(tmp_path / "good", _energy(1.0))
    bad = tmp_path / "bad" / "manifest.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(ValueError, match=message) as caught:
        carbon.total_from_manifests([tmp_path])
    assert str(bad) in str(caught.value)


def test_folder_without_manifests_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json under"):
        carbon.total_from_manifests([tmp_path])


def test_cli_modes(tmp_path, capsys):
    assert carbon.main(["--paper"]) == 0
    out = capsys.readouterr().out
    assert "1,720,320" in out and "291.42" in out and "539.00" in out

    assert carbon.main(["--gpu-hours", "184320", "--watts", "400"]) == 0
    assert "31.22 tCO2eq" in capsys.readouterr().out

    _write_manifest(tmp_path / "run/01-pretrain", _energy(3.0))
    assert carbon.main([str(tmp_path / "run")]) == 0
    assert "1 manifests: 3.0000 device-hours" in capsys.readouterr().out

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/manifest.json").write_text("{}")
    assert carbon.main([str(tmp_path / "broken")]) == 1
    assert str(tmp_path / "broken/manifest.json") in capsys.readouterr().err

    with pytest.raises(SystemExit):
        carbon.main([])


def test_per_run_rows_and_pipeline_total(tmp_path, capsys):
    run = tmp_path / "demo"
    _write_manifest(run / "03-pretrain", _energy(2.0))
    _write_manifest(run / "06-rlhf/round-2/ppo", _energy(0.5))
    (run / "09-eval").mkdir(parents=True)
    (run / "09-eval" / "manifest.json").write_text(json.dumps({"stage": "eval"}))  # not metered
    rows = carbon.manifest_energy([run], missing_ok=True)
    assert [Path(r["manifest"]).parent.name for r in rows] == ["03-pretrain", "ppo"]
    assert carbon.sum_energy(rows)["device_hours"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="no 'energy' section"):
        carbon.manifest_energy([run])
    assert carbon.manifest_energy([tmp_path / "empty-run"], missing_ok=True) == []

    text = carbon.format_runs(rows, run)
    lines = text.splitlines()
    assert lines[1].split()[:3] == ["03-pretrain", "cpux1", "2.0000"]
    assert lines[2].split()[:3] == ["06-rlhf/round-2/ppo", "cpux1", "0.5000"]
    total_kg = 2.5 * 0.1 * 1.1 * 0.385  # 100 W, SPEC §12 factors, in kg
    assert lines[-1].split()[0] == "total" and float(lines[-1].split()[-1]) == pytest.approx(total_kg, abs=1e-5)

    (run / "09-eval" / "manifest.json").unlink()
    assert carbon.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "06-rlhf/round-2/ppo" in out and "2 manifests: 2.5000 device-hours" in out
