"""Reading tensor files safely: why a file is not one, never torch's unsafe advice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoclip.data.tensor_files import TensorFileError, load_tensors

UNSAFE = ("weights_only", "arbitrary code", "will likely succeed", "trust")


class Pickled:  # a Python object that weights_only=True refuses
    pass


def reason(path) -> str:
    with pytest.raises(TensorFileError) as err:
        load_tensors(path)
    msg = str(err.value)
    assert "\n" not in msg and not any(w in msg for w in UNSAFE), msg
    return msg


def test_tensors_load(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt")["w"], torch.ones(2))


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_say_why(tmp_path, seed):
    path = tmp_path / "random.pt"
    data = np.random.default_rng(seed).bytes(4096)
    path.write_bytes(b"\x80" + data if seed % 2 else data)  # odd seeds: a pickle's first byte
    msg = reason(path)
    assert msg.startswith("not a PyTorch file: "), msg
    assert ("pickle data" in msg) if seed % 2 else ("neither a zip archive nor a pickle" in msg)


def test_other_files_say_why(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    assert reason(tmp_path / "empty.pt") == "not a PyTorch file: it is empty (0 bytes)"
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:300])
    assert reason(tmp_path / "cut.pt") == "a zip archive, but truncated or damaged"
    torch.save({"model": Pickled()}, tmp_path / "object.pt")
    assert "Python objects other than tensors" in reason(tmp_path / "object.pt")
    assert "Pickled" in reason(tmp_path / "object.pt")
