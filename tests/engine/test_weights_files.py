"""Opening .pth files (reid.serialization): every record's CRC32 is checked before a
weights_only load, and every bad file is refused with one message naming it and what is wrong."""
import os

import pytest
import torch

from bad_files import flip_byte_in_largest_tensor, truncate, write_pickle_payload
from reid.models import build_model
from reid.models.resnet import read_state_dict, resnet18
from reid.serialization import WeightsFileError, load_weights_file, verify_archive


@pytest.fixture
def weights(tmp_path):
    path = str(tmp_path / "w.pth")
    torch.save({"a": torch.arange(4096, dtype=torch.float32), "b": torch.ones(3, 3)}, path)
    return path


def test_an_intact_archive_has_every_record_verified_and_loads(weights):
    assert verify_archive(weights) >= 3  # data.pkl and the two tensors, at least
    state = load_weights_file(weights)
    assert torch.equal(state["a"], torch.arange(4096, dtype=torch.float32))


def test_a_flipped_byte_inside_a_tensor_is_refused_naming_the_file_and_the_record(weights):
    original = torch.arange(4096, dtype=torch.float32)
    record = flip_byte_in_largest_tensor(weights)
    # what torch.load alone does: the changed value loads without a word
    assert not torch.equal(torch.load(weights, weights_only=True)["a"], original)
    with pytest.raises(WeightsFileError) as err:
        load_weights_file(weights, what="checkpoint")
    msg = str(err.value)
    assert msg.startswith(f"checkpoint {weights} is corrupted: record {record!r} fails its integrity check")
    assert "CRC" in msg and "nothing was loaded" in msg


def test_truncated_and_non_pytorch_files_are_named(weights, tmp_path):
    truncate(weights)
    with pytest.raises(WeightsFileError, match=rf"cannot read weights file {weights}: the file is corrupted or truncated"):
        load_weights_file(weights)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"")
    with pytest.raises(WeightsFileError, match="corrupted or truncated"):
        load_weights_file(str(junk))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    path, marker = str(tmp_path / "evil.pth"), str(tmp_path / "ran")
    write_pickle_payload(path, marker)
    with pytest.raises(WeightsFileError, match=rf"weights file {path} is not a valid weights file: it holds pickled "
                                               r"objects other than tensors .*(?i:unsupported global)"):
        load_weights_file(path)
    assert not os.path.exists(marker)


def test_files_without_checksums_still_load(tmp_path):
    # written with CRC32 turned off (every stored CRC is 0): nothing to verify, nothing refused
    path = str(tmp_path / "nocrc.pth")
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"a": torch.ones(8)}, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert verify_archive(path) < 3
    assert torch.equal(load_weights_file(path)["a"], torch.ones(8))
    # the pre-1.6 format is not a zip archive: loaded unverified, as torch.load does
    legacy = str(tmp_path / "legacy.pth")
    torch.save({"a": torch.ones(8)}, legacy, _use_new_zipfile_serialization=False)
    assert verify_archive(legacy) == 0 and torch.equal(load_weights_file(legacy)["a"], torch.ones(8))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("imagenet") / "resnet18.pth")
    torch.save(resnet18().state_dict(), path)
    return path


def test_pretrained_weights_are_integrity_checked(resnet18_file, tmp_path):
    corrupted = str(tmp_path / "r18.pth")
    with open(resnet18_file, "rb") as src, open(corrupted, "wb") as dst:
        dst.write(src.read())
    flip_byte_in_largest_tensor(corrupted)
    with pytest.raises(WeightsFileError, match=rf"pretrained weights file {corrupted} is corrupted: record"):
        build_model("c2d_resnet18", num_classes=4, pretrained=corrupted)
    truncate(corrupted)
    with pytest.raises(WeightsFileError, match=rf"cannot read pretrained weights file {corrupted}"):
        read_state_dict(corrupted)
    evil, marker = str(tmp_path / "evil.pth"), str(tmp_path / "ran")
    write_pickle_payload(evil, marker)
    with pytest.raises(WeightsFileError, match=rf"pretrained weights file {evil} is not a valid weights file"):
        read_state_dict(evil)
    assert not os.path.exists(marker)
    tensor_only = str(tmp_path / "tensor.pth")
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(WeightsFileError, match="holds a Tensor, expected a state dict"):
        read_state_dict(tensor_only)
