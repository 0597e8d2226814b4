"""The GPU check script runs end to end on the CPU in its tiny smoke mode (no GPU here)."""

import json

from benchmarks.gpu_check import main, peak_tflops


def test_the_gpu_check_runs_in_smoke_mode(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    result = main(["--cpu-smoke", "--steps", "1", "--warmup", "1", "--compile", "off", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [r["stage"] for r in result["rows"]] == ["vit-b", "llama-350m"]
    for row in result["rows"]:
        assert row["samples_per_s"] > 0 and 0 < row["teacher_flops_share"] < 1


def test_peak_flops_are_known_for_the_usual_gpus() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some future GPU") is None
