import numpy as np
import pytest

from mtad.edge_runtime.atomic import atomic_path, atomic_write


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with atomic_write(target, "w") as f:
        f.write("new")
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"
    assert _leftovers(tmp_path, {"metrics.json"}) == []


def test_atomic_write_error_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old bytes")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old bytes"
    assert _leftovers(tmp_path, {"model.bin"}) == []


def test_atomic_write_error_without_old_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with atomic_write(tmp_path / "new.txt", "w") as f:
            f.write("x")
            raise KeyError("k")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_suffix_for_np_savez(tmp_path):
    target = tmp_path / "stats.npz"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npz" and tmp != target
        np.savez(tmp, a=np.arange(3))  # would append ".npz" if the suffix were different
    with np.load(target) as z:
        np.testing.assert_array_equal(z["a"], [0, 1, 2])
    assert _leftovers(tmp_path, {"stats.npz"}) == []


def test_atomic_path_error_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "stats.npz"
    np.savez(target, a=np.arange(3))
    before = target.read_bytes()
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            np.savez(tmp, a=np.arange(10))
            raise ValueError("late failure")
    assert target.read_bytes() == before
    assert _leftovers(tmp_path, {"stats.npz"}) == []


def test_atomic_write_rejects_append_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "ab"):
            pass


def test_replace_dir_swaps_whole_directory(tmp_path):
    from mtad.edge_runtime.atomic import replace_dir

    target, new = tmp_path / "bundle", tmp_path / ".bundle.tmp-1"
    target.mkdir()
    (target / "manifest.yaml").write_text("old")
    (target / "only-old").write_text("x")
    new.mkdir()
    (new / "manifest.yaml").write_text("new")
    replace_dir(new, target)
    assert sorted(p.name for p in target.iterdir()) == ["manifest.yaml"]
    assert (target / "manifest.yaml").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_replace_dir_into_missing_target(tmp_path):
    from mtad.edge_runtime.atomic import replace_dir

    new = tmp_path / "new"
    new.mkdir()
    (new / "f").write_text("1")
    replace_dir(new, tmp_path / "out")
    assert (tmp_path / "out" / "f").read_text() == "1" and not new.exists()


def test_sweep_stale_removes_only_dead_writers(tmp_path):
    import os
    import subprocess
    import sys

    from mtad.edge_runtime.atomic import sweep_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".b.tmp-{dead_pid}").mkdir()
    (tmp_path / f".b.tmp-{os.getpid()}").mkdir()  # this (live) process: kept
    (tmp_path / ".b.tmp-notapid").mkdir()
    removed = sweep_stale(tmp_path, ".b.tmp-")
    assert [p.name for p in removed] == [f".b.tmp-{dead_pid}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".b.tmp-{os.getpid()}", ".b.tmp-notapid"])


def test_written_files_get_normal_permissions_not_mkstemps_0600(tmp_path):
    """A bundle written by root must stay readable by the service user (mkstemp makes 0600)."""
    import os

    from mtad.edge_runtime.atomic import atomic_path, atomic_write

    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.json", "w") as f:
            f.write("{}")
        with atomic_path(tmp_path / "new.npz") as p:
            p.write_bytes(b"x")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "new.npz").stat().st_mode & 0o777 == 0o644
        (tmp_path / "kept").write_text("old")
        os.chmod(tmp_path / "kept", 0o640)
        with atomic_write(tmp_path / "kept", "w") as f:
            f.write("new")
        assert (tmp_path / "kept").stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    finally:
        os.umask(umask)


def test_replace_dir_through_a_symlink_swaps_the_directory_it_points_to(tmp_path):
    from mtad.edge_runtime.atomic import replace_dir

    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "a").write_text("old")
    (tmp_path / "bundle").symlink_to(tmp_path / "v1")
    new = tmp_path / "new"
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir(new, tmp_path / "bundle")
    assert (tmp_path / "bundle").is_symlink() and (tmp_path / "bundle" / "a").read_text() == "new"
    assert not new.exists()
