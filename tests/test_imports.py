"""The edge runtime must import (and run its front end) with torch unimportable."""

import subprocess
import sys
import textwrap

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def run_edge_blocked(args, before: str = "", after: str = "") -> subprocess.CompletedProcess:
    """``mtad-edge ARGS`` in a process where torch cannot load; a non-zero exit fails the process.
    ``before``/``after``: code run around it (e.g. block another module, check sys.modules)."""
    return run_blocked("import sys\n" + before + "from mtad.edge_runtime.cli import main\n"
                       f"try:\n    main({[str(a) for a in args]!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n" + after)


def test_edge_runtime_imports_without_torch():
    res = run_blocked(
        """
        import pkgutil, importlib, sys
        import mtad.edge_runtime as er
        for m in pkgutil.iter_modules(er.__path__):
            importlib.import_module("mtad.edge_runtime." + m.name)
        import numpy as np
        from mtad.edge_runtime.features import log_mel
        x = log_mel(np.zeros(16000, np.float32) + 0.01)
        assert x.shape == (128, 32), x.shape
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_block_really_blocks_torch():
    res = run_blocked("import torch")
    assert res.returncode != 0
    assert "torch is blocked" in res.stderr


def test_no_generic_top_level_modules(tmp_path):
    # From an empty working directory (so the repo's folders are not on sys.path), only the
    # mtad.* names resolve: the install puts no `train`/`export` module in site-packages.
    code = (
        "import importlib.util as u, mtad.train, mtad.export, mtad.calibration, mtad.edge_runtime;"
        "print([n for n in ('train', 'export', 'calibration', 'edge_runtime') if u.find_spec(n)])"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
