import pytest
import torch

from aand_lightning.artifacts.torch_file import load_torch_file
from aand_lightning.errors import UserError
from aand_lightning.models.weights import WeightsUnavailableError, load_weights_file


@pytest.fixture(scope="module")
def junk_files(tmp_path_factory):
    """Random bytes make torch's unpickler raise many exception types (IndexError, TypeError, ...)."""
    folder = tmp_path_factory.mktemp("junk")
    paths = []
    for seed in range(300):
        path = folder / f"{seed}.ckpt"
        path.write_bytes(torch.randint(0, 256, (2048,), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.uint8).numpy().tobytes())  # fmt: skip
        paths.append(path)
    return paths


def test_any_junk_file_is_one_user_error(junk_files):
    for path in junk_files:
        with pytest.raises(UserError, match="is not a stage-2 checkpoint"):
            load_torch_file(path, "a stage-2 checkpoint", "pass another file")


def test_any_junk_weights_file_is_one_user_error(junk_files):
    for path in junk_files[:100]:
        weights = path.with_suffix(".pth")
        weights.write_bytes(path.read_bytes())
        with pytest.raises(WeightsUnavailableError, match="is not a PyTorch or safetensors state dict"):
            load_weights_file(weights)


def test_a_missing_file_stays_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.ckpt", "a stage-2 checkpoint", "pass another file")
