"""The emulator's hooks for black-box harnesses: reading what storage holds, and switching one
fault rule off while the others stay."""

from __future__ import annotations

from pathlib import Path

from guru_async import GuruSession
from guru_async.testing import UPLOAD_ROUTE, FaultRule, GuruEmulator


async def test_read_stored_returns_the_bytes_of_the_last_complete_upload(
    emulator: GuruEmulator, guru: GuruSession, tmp_path: Path
) -> None:
    """read_stored gives back exactly the bytes uploaded for a video, and None for a video
    whose content never arrived."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x01first take" * 1000)
    video_id = await guru.upload_video(clip)
    assert emulator.read_stored(video_id) == clip.read_bytes()
    assert emulator.read_stored("00000000-0000-4000-8000-000000000000") is None


def test_faults_remove_switches_off_only_the_rule_given() -> None:
    """Faults.remove takes out the very rule added (not an equal one) and says whether it was
    there; the other rules stay in order."""
    emu = GuruEmulator()
    drop = FaultRule(route=UPLOAD_ROUTE, kind="drop")
    twin = FaultRule(route=UPLOAD_ROUTE, kind="drop")
    slow = FaultRule(route="*", kind="delay", delay=0.1)
    emu.faults.add(drop)
    emu.faults.add(slow)
    emu.faults.add(twin)
    assert emu.faults.remove(drop) is True
    assert emu.faults.rules == [slow, twin]
    assert emu.faults.rules[1] is twin
    assert emu.faults.remove(drop) is False
    assert emu.faults.rules == [slow, twin]
