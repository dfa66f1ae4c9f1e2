"""`flash-payouts keys`: check that the master key opens the ledger, or rotate to a new key."""

from __future__ import annotations

import argparse
from pathlib import Path

from ledger.secretbox import SecretBox, SecretBoxError, parse_master_key

from ..keys import Checked, KeyMismatch, check, rotate
from ..runtime import open_ledger, secret_box
from ..settings import load
from . import CommandError


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keys",
        help="check the master key against the ledger, or rotate it",
        description="Every secret in the ledger (card keys, issuer keys, BTCPay API keys, "
        "webhook secrets) is sealed under the master key. `check` opens each of them; `rotate` "
        "re-seals each under a new key, in one transaction.",
    )
    actions = p.add_subparsers(dest="keys_action", metavar="ACTION", required=True)

    checking = actions.add_parser(
        "check", parents=parents, help="open every sealed secret with the master key"
    )
    checking.set_defaults(handler=_check)

    rotating = actions.add_parser(
        "rotate",
        parents=parents,
        help="re-seal every secret under a new master key",
        description="Stop every process using the ledger first. The current key comes from "
        "FLASH_MASTER_KEY or FLASH_MASTER_KEY_FILE as usual; the new one from a file (make it "
        "with `flash-payouts keygen`). Afterwards only the new key opens the ledger: restart "
        "the processes with it.",
    )
    rotating.add_argument(
        "--new-master-key-file",
        required=True,
        metavar="FILE",
        help="file holding the new master key (64 hex characters or base64 of 32 bytes)",
    )
    rotating.set_defaults(handler=_rotate)


async def _check(args: argparse.Namespace) -> int:
    settings = load(args)
    box = secret_box(settings)
    engine = await open_ledger(settings)
    try:
        checked = await check(engine, box)
    except KeyMismatch as exc:
        raise CommandError(str(exc)) from None
    finally:
        await engine.dispose()
    counts = _counts(checked)
    print(f"the master key opens all {checked.total} sealed secrets of the ledger ({counts})")
    return 0


async def _rotate(args: argparse.Namespace) -> int:
    settings = load(args)
    old = secret_box(settings)
    new_key = _read_key(args.new_master_key_file)
    if _same_key(old, new_key):
        raise CommandError("the new master key is the current one; make a new one with keygen")
    engine = await open_ledger(settings)
    try:
        rotated = await rotate(engine, old, new_key)
    except KeyMismatch as exc:
        raise CommandError(f"nothing rotated: {exc}") from None
    finally:
        await engine.dispose()
    print(
        f"re-sealed {rotated.total} secrets under the new master key ({_counts(rotated)}); "
        "only the new key opens the ledger now: restart every process with it"
    )
    return 0


def _read_key(path: str) -> bytes:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CommandError(f"cannot read new master key file {path}: {exc.strerror}") from None
    try:
        return parse_master_key(text)
    except ValueError as exc:
        raise CommandError(f"new master key unusable: {exc}") from None


def _same_key(box: SecretBox, key: bytes) -> bool:
    try:
        box.open(SecretBox(key).seal(b"same?"))
    except SecretBoxError:
        return False
    return True


def _counts(checked: Checked) -> str:
    return ", ".join(f"{what} {n}" for what, n in checked.counts.items())
