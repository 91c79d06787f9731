import shutil
from pathlib import Path

import pytest

from llmbatch.models import load_model
from llmbatch.models.weights import CorruptWeightsError


def test_a_truncated_weight_file_is_a_clear_error_naming_it(smollm2_dir, tmp_path: Path):
    for path in Path(smollm2_dir).iterdir():
        if path.name != "model.safetensors":
            shutil.copy(path, tmp_path / path.name)
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes((Path(smollm2_dir) / "model.safetensors").read_bytes()[:1000])

    with pytest.raises(CorruptWeightsError, match="model.safetensors.*damaged or incomplete"):
        load_model(str(tmp_path))
