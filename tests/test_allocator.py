"""lavise_fast.allocator: after keep_freed_memory, a large block freed and allocated again is reused
(no page faults); under glibc's default it is mapped afresh each time. Each case runs in its own
process, as the setting holds for the whole process."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lavise_fast.cli as cli

_FAULTS = """
import resource, sys, torch
from lavise_fast.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(2):  # the heap settles
    x = torch.ones(64 << 18)  # 64 MiB, above glibc's largest dynamic mmap threshold (32 MiB)
    del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(64 << 18)
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_kept_memory_is_reused_without_page_faults():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    block = 16384  # 4 KiB pages in 64 MiB
    assert default >= 9 * block, f"glibc's default should map 64 MiB afresh each time: {default} faults"
    assert kept <= 1.1 * block, f"kept memory should be reused (at most one block placed afresh): {kept} faults"


@pytest.mark.parametrize("flag, calls", [([], 1), (["--release-memory"], 0)])
def test_the_command_keeps_freed_memory_unless_told(monkeypatch, tmp_path, flag, calls):
    made = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: made.append(1) or True)
    status = cli.main(["report", "--result", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r.html"), *flag])
    assert status == 2 and len(made) == calls  # the missing result: exit 2, after the allocator was set
