"""`flash-payouts keygen`: print a fresh master key."""

from __future__ import annotations

import argparse

from ledger.secretbox import SecretBox


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keygen",
        help="print a new random master key",
        description="Print 32 random bytes as hex, for FLASH_MASTER_KEY or FLASH_MASTER_KEY_FILE.",
    )
    p.set_defaults(handler=lambda args: print(SecretBox.generate_key_text()))
