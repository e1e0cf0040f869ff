"""handlers/cores.py's note_worker_start: a worker in place of one that died is told apart from a
first start, for .mar archives (unpacked per registration) and archive folders (linked into the
model store), and nothing is written into the model store."""
import sys
from pathlib import Path

import pytest
from cores import note_worker_start


@pytest.fixture
def on_socket(monkeypatch: pytest.MonkeyPatch):
    def start(sock: str, model_dir: Path) -> bool:
        monkeypatch.setattr(sys, "argv", ["model_service_worker.py", "--sock-type", "unix", "--sock-name", sock])
        return note_worker_start(model_dir)

    return start


def test_a_restart_on_the_same_socket_counts_and_a_new_socket_does_not(on_socket, tmp_path: Path) -> None:
    unpacked = tmp_path / "models" / "registration-1"  # a .mar, as TorchServe unpacks it
    unpacked.mkdir(parents=True)
    assert on_socket("/tmp/.ts.sock.9000", unpacked) is False
    assert on_socket("/tmp/.ts.sock.9000", unpacked) is True  # the same socket again: the last one died
    assert on_socket("/tmp/.ts.sock.9001", unpacked) is False  # scale-up: a socket of its own


def test_an_archive_folder_registered_again_is_a_first_start(on_socket, tmp_path: Path) -> None:
    """TorchServe links an archive folder into a directory of each registration's own; the next
    registration of the same folder (another server, or after unregistering) starts afresh."""
    store_folder = tmp_path / "model_store" / "llm-1.0"
    store_folder.mkdir(parents=True)
    before = sorted(p.name for p in store_folder.iterdir())
    for registration in ("a1", "b2"):
        link = tmp_path / "models" / registration / "llm-1.0"
        link.parent.mkdir(parents=True)
        link.symlink_to(store_folder)
        assert on_socket("/tmp/.ts.sock.9000", link) is False
        assert on_socket("/tmp/.ts.sock.9000", link) is True
    assert sorted(p.name for p in store_folder.iterdir()) == before


def test_outside_torchserve_nothing_is_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert note_worker_start(tmp_path) is False and not any(tmp_path.iterdir())
