"""Smoke test of the benchmark: `benchmarks/run.py --tiny` starts the real service and the floor,
sends a few calls per record size and prints its tables. Timings are never asserted: CI machines
are shared and noisy; docs/performance.md has the figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _synthea_dir() -> Path | None:
    candidates = [
        ROOT.parent / "shared" / "fhir-r4" / "synthea",
        Path("/work/shared/fhir-r4/synthea"),
    ]
    if os.environ.get("MSHT_CDS_SYNTHEA_DIR"):
        candidates.insert(0, Path(os.environ["MSHT_CDS_SYNTHEA_DIR"]))
    return next((c for c in candidates if c.is_dir()), None)


def test_benchmark_tiny_mode_runs_and_prints_the_table(tmp_path: Path) -> None:
    synthea = _synthea_dir()
    if synthea is None:
        pytest.skip("no Synthea records (shared/fhir-r4/synthea beside the clone)")
    out = tmp_path / "benchmark.json"
    env = {**os.environ, "MSHT_CDS_SYNTHEA_DIR": str(synthea)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"

    for size in ("small", "medium", "large"):
        assert re.search(rf"^\| 1 \| 1 \| {size} \| \d+ \|", done.stdout, re.MULTILINE), size
    assert "| clients | workers | size |" in done.stdout
    assert "library load" in done.stdout
    assert "service peak RSS per worker" in done.stdout
    assert "floor peak RSS per worker" in done.stdout

    results = json.loads(out.read_text())
    assert [row["size"] for row in results["rows"]] == ["small", "medium", "large"]
    for row in results["rows"]:
        for server in ("floor", "service"):
            assert row[server]["errors"] == 0
            assert row[server]["requests"] >= 1
            assert row[server]["statuses"] == {"200": row[server]["requests"]}
    for record in results["records"].values():
        assert record["service_answer"]["status"] == 200
        assert record["resources_sent"] > 0
