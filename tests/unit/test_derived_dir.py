"""handlers/derived.py: where a worker writes what it derives from an archive (the int4 kernel's
graph, an int8 KV cache's copy): the archive's folder, else a private directory of its own."""
import os
import stat
import tempfile
from pathlib import Path

import derived
import pytest


@pytest.fixture
def read_only_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    archive = tmp_path / "store" / "llm"
    archive.mkdir(parents=True)
    (archive / "manifest.json").write_text('{"name": "llm"}')
    monkeypatch.setattr(derived, "writable", lambda folder: folder != archive)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return archive


def test_a_writable_archive_keeps_what_is_derived_from_it(tmp_path: Path) -> None:
    assert derived.workdir(tmp_path) == tmp_path and not any(tmp_path.iterdir())  # the probe leaves nothing


def test_a_read_only_archive_gets_a_private_directory_of_its_own(read_only_archive: Path) -> None:
    work = derived.workdir(read_only_archive)
    assert work.parent.name == f"maas-{os.getuid()}" and work.name.startswith("llm-")
    assert stat.S_IMODE(work.stat().st_mode) == 0o700 and stat.S_IMODE(work.parent.stat().st_mode) == 0o700
    (work / "batch_decoder.int4_vnni.onnx").write_bytes(b"made by the first worker")
    assert derived.workdir(read_only_archive) == work  # the model's next worker finds what the first made
    (read_only_archive / "manifest.json").write_text('{"name": "llm", "version": "2.0"}')
    again = derived.workdir(read_only_archive)  # another archive in its place: made afresh, the old copies gone
    assert again != work and not work.exists() and again.parent == work.parent


def test_a_directory_others_may_use_is_not_used(read_only_archive: Path, tmp_path: Path) -> None:
    shared = tmp_path / "tmp" / f"maas-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)  # made by someone else first, or loosened: a library loaded from it could be anyone's
    work = derived.workdir(read_only_archive)
    assert work is not None and not work.is_relative_to(shared) and work.parent.parent == tmp_path / "tmp"
    assert stat.S_IMODE(work.parent.stat().st_mode) == 0o700  # one of this worker's own instead


def test_a_temp_dir_others_may_rename_in_is_refused(read_only_archive: Path, tmp_path: Path) -> None:
    (tmp_path / "tmp").chmod(0o777)  # not sticky: another user could swap our directory for theirs
    assert derived.workdir(read_only_archive) is None
    (tmp_path / "tmp").chmod(0o1777)  # as /tmp is
    assert derived.workdir(read_only_archive) is not None
