import pytest

from mtad.edge_runtime.dataset import parse_clip_path, parse_machine_from_path, scan_dataset
from mtad.edge_runtime.errors import DatasetError

from .conftest import shared_data


def test_scans_real_mimii_fan_layout():
    index = scan_dataset(shared_data("mimii-fan-0db"))
    assert index.machine_types == ["fan"]
    counts = {}
    for c in index.clips:
        counts[(c.machine_id, c.split, c.label)] = counts.get((c.machine_id, c.split, c.label), 0) + 1
    assert counts == {
        ("id_00", "train", 0): 10, ("id_00", "test", 0): 10, ("id_00", "test", 1): 20,
        ("id_02", "train", 0): 5, ("id_02", "test", 0): 5, ("id_02", "test", 1): 10,
    }


def test_dev_data_layout_and_skipped_files(tmp_path):
    base = tmp_path / "dev_data" / "pump"
    (base / "train").mkdir(parents=True)
    (base / "test").mkdir()
    (base / "train" / "normal_id_00_00000001.wav").write_bytes(b"x")
    (base / "test" / "anomaly_id_02_00000003.wav").write_bytes(b"x")
    (base / "test" / "mystery.wav").write_bytes(b"x")
    (base / "notes.txt").write_text("hi")
    index = scan_dataset(tmp_path)
    assert [(c.machine_type, c.machine_id, c.split, c.label, c.index) for c in index.clips] == [
        ("pump", "id_00", "train", 0, 1), ("pump", "id_02", "test", 1, 3),
    ]
    assert sum(index.skipped.values()) == 2


def test_empty_or_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no clips"):
        scan_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not a directory"):
        scan_dataset(tmp_path / "missing")


def test_parse_paths(tmp_path):
    assert parse_clip_path(tmp_path / "valve" / "valid" / "normal_id_00_00000000.wav") is None
    val = parse_clip_path(tmp_path / "valve" / "val" / "anomaly_id_04_00000002.wav")
    assert (val.machine, val.split, val.label, val.index) == ("valve/id_04", "val", 1, 2)
    assert parse_machine_from_path(tmp_path / "valve" / "val" / "normal_id_04_00000002.wav") == ("valve", "id_04")
    assert parse_machine_from_path(tmp_path / "fan" / "test" / "anomaly_id_06_00000001.wav") == ("fan", "id_06")
