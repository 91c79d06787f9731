"""A 2M-row CSV streams through limit / map / write_parquet in bounded memory."""

import json
import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

from llmbatch._fixtures import customers

NUM_ROWS = 2_000_000
LIMIT = 1_900_000
# Above the interpreter with its imports. The CSV is ~350 MB on disk and ~330 MB as one Arrow
# table, so holding the file (or the output) whole cannot fit; streaming uses about 150 MB.
MAX_GROWTH_BYTES = 250 << 20

PIPELINE = textwrap.dedent(
    """
    import json, sys
    from llmbatch import data

    def peak_kib():
        # VmHWM belongs to this process image; ru_maxrss would include the parent's peak at fork.
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    baseline = peak_kib()
    (
        data.read_csv(sys.argv[1])
        .limit(int(sys.argv[3]))
        .map(lambda row: {**row, "Name": row["First Name"] + " " + row["Last Name"]})
        .write_parquet(sys.argv[2])
    )
    print(json.dumps({"baseline_kib": baseline, "peak_kib": peak_kib()}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from /proc")
def test_two_million_row_csv_streams_in_bounded_memory(tmp_path):
    csv_path = tmp_path / "customers-2000000.csv"
    customers.write_customers_csv(csv_path, NUM_ROWS)
    assert csv_path.stat().st_size > MAX_GROWTH_BYTES

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE, str(csv_path), str(out), str(LIMIT)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    memory = json.loads(result.stdout.strip().splitlines()[-1])
    growth = (memory["peak_kib"] - memory["baseline_kib"]) * 1024
    assert growth < MAX_GROWTH_BYTES, f"peak grew {growth / 2**20:.0f} MiB over the interpreter"

    files = sorted(out.iterdir())
    assert sum(pq.ParquetFile(file).metadata.num_rows for file in files) == LIMIT
    last_file = pq.read_table(files[-1], columns=["Index", "Name"])
    last_row = last_file.slice(last_file.num_rows - 1).to_pylist()[0]
    assert last_row["Index"] == LIMIT
    assert " " in last_row["Name"]
