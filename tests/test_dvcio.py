"""remflow run's DVC records: params reads memoised by content, never stale; a lock header DVC reads."""

from __future__ import annotations

import os

import pytest


def test_a_params_edit_that_keeps_size_and_mtime_is_read_afresh(tmp_path):
    import dvc.dependency.param as param
    from dvc.fs import LocalFileSystem

    from remflow.executor.dvcio import cached_param_reads

    fs, path = LocalFileSystem(), str(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("a: 1\nlr: 1e-3\n")
    with cached_param_reads():
        assert param.load_path(path, fs) == {"a": 1, "lr": 0.001}
        st = os.stat(path)
        (tmp_path / "params.yaml").write_text("a: 7\nlr: 1e-3\n")  # same size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime: only the bytes differ
        assert param.load_path(path, fs) == {"a": 7, "lr": 0.001}
        (tmp_path / "params.yaml").write_text("a: [1\n")  # broken: DVC's own parse error, nothing memoised
        with pytest.raises(Exception, match="params.yaml"):
            param.load_path(path, fs)


def test_a_new_lock_gets_a_header_dvc_validates(tmp_path):
    from dvc.dvcfile import Lockfile
    from dvc.utils.serialize import loads_yaml

    from remflow.executor.dvcio import LockText, _check_header

    lock = LockText(str(tmp_path / "dvc.lock"))
    Lockfile.validate(loads_yaml(lock.text()), fname="dvc.lock")  # an empty lock DVC reads
    with pytest.raises(Exception, match="validation failed"):
        _check_header("schema: '3.0'\n", "dvc.lock")
