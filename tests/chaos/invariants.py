"""The invariants a chaos run is checked against, once every process has stopped.

Each function reads what the run left behind (the last producer run's output, the emulators'
videos and storage, the workers' logs) and returns one line per violation, starting with the
invariant's name (see ``tests.chaos.harness`` for the list).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any

from tests.chaos.accounts import Account
from tests.chaos.schedule import Config

ORPHAN = re.compile(r"possible orphan", re.IGNORECASE)


def orphan_lines(workdir: Path) -> list[str]:
    """The "possible orphan" lines of every worker's log (the SDK logs one at WARNING, with
    the file's name, when a worker may have died between Create Video's answer and recording
    it)."""
    lines = []
    for log in sorted(workdir.glob("*-worker*.log")):
        text = log.read_text(errors="replace")
        lines += [line for line in text.splitlines() if ORPHAN.search(line)]
    return lines


def last_results(account: Account) -> list[dict[str, Any]]:
    """The results the account's last producer run printed."""
    return [e for e in account.events(len(account.runs) - 1) if "item" in e]


def one_result_each(account: Account) -> list[str]:
    """``one-result``: exactly one result per item in the last producer run, none unknown."""
    run = len(account.runs)
    by_item = collections.Counter(e["item"] for e in last_results(account))
    known = {str(p) for p in account.files}
    found = [
        f"one-result: {account.name} {Path(item).name} has {by_item[item]} results in the "
        f"last producer run ({run})"
        for item in sorted(known)
        if by_item[item] != 1
    ]
    found += [
        f"one-result: {account.name} result for an unknown item {item}"
        for item in sorted(set(by_item) - known)
    ]
    return found


def results_hold_the_files(account: Account) -> list[str]:
    """``item-ok`` and ``content``: every result is a success whose video, in this account,
    holds the bytes of the file on disk now."""
    found = []
    for event in last_results(account):
        name = Path(event["item"]).name
        if not event["ok"]:
            found.append(f"item-ok: {account.name} {name} failed: {event['error']}")
            continue
        video_id = event["video_id"]
        if video_id not in account.emu.videos:
            found.append(f"content: {account.name} {name}: video {video_id} not in its account")
            continue
        stored = account.emu.read_stored(video_id)
        if stored == Path(event["item"]).read_bytes():
            continue
        if stored is None:
            what = "nothing stored"
        elif stored in account.contents.get(name, set()):
            what = "an older content of the file"
        else:
            what = "other bytes"
        found.append(f"content: {account.name} {name}: video {video_id[:8]} holds {what}")
    return found


def finished_in_bound(account: Account, config: Config, fault_end: float) -> list[str]:
    """``bound``: the last producer run finished within the bound after the later of the last
    fault and its own start (a run that never finished is reported as ``hang`` instead)."""
    run = len(account.runs) - 1
    done = account.done(run)
    if done is None:
        return []
    start = max(fault_end, account.run_started[run])
    left = sum(1 for e in last_results(account) if float(e["t"]) > start)
    bound = config.bound(left)
    took = done - start
    if took <= bound:
        return []
    return [
        f"bound: {account.name}'s last producer run finished {took:.1f} s after the last fault, "
        f"with {left} results to come then (bound {bound:.1f} s)"
    ]


def video_counts(account: Account) -> tuple[int, int]:
    """(videos created for the account's items, item contents: one per content each had)."""
    per_name = collections.Counter(v.filename for v in account.emu.videos.values())
    videos = sum(per_name[p.name] for p in account.files)
    return videos, sum(len(account.contents[p.name]) for p in account.files)


def one_video_per_content(account: Account, orphans: list[str]) -> list[str]:
    """``videos-per-item``: an item has at most one video per content it had, plus the orphans
    logged naming it (orphans logged without a file name cover any item)."""
    videos = account.emu.videos
    spare = sum(1 for line in orphans if not any(p.name in line for p in account.files))
    found = []
    for path in account.files:
        mine = [v for v in videos.values() if v.filename == path.name]
        allowed = len(account.contents[path.name])
        allowed += sum(1 for line in orphans if path.name in line)
        extra = len(mine) - allowed
        if extra <= 0:
            continue
        if spare >= extra:
            spare -= extra
            continue
        uploads = [account.emu.uploads_completed[v.id] for v in mine]
        found.append(
            f"videos-per-item: {account.name} {path.name} has {len(mine)} videos "
            f"{[v.id[:8] for v in mine]} (uploads completed {uploads}), allowed {allowed} "
            "(contents it had + orphans logged)"
        )
    return found


def accounts_kept_apart(accounts: list[Account]) -> list[str]:
    """``accounts``: no video in an account's emulator is named after, or holds the content
    of, anything but that account's own items."""
    found = []
    for account in accounts:
        own = {p.name for p in account.files}
        contents: set[bytes] = set().union(*account.contents.values())
        for video in account.emu.videos.values():
            stored = account.emu.read_stored(video.id)
            if video.filename not in own or (stored is not None and stored not in contents):
                found.append(
                    f"accounts: video {video.id[:8]} of {video.filename} was created in "
                    f"account {account.name}, which has no such item"
                )
    return found
