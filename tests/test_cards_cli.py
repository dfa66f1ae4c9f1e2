"""`flash-payouts cards ...` against a real ledger: JSON out, one-line errors, keys only where
programming or wiping a card needs them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from flash_payouts.cli import main
from ledger.db import create_engine
from ledger.secretbox import SecretBox
from lnurl_gateway.app import GatewayConfig, create_app

K1 = "0c3b25d92b38ae443229dd59ad34b85d"
K2 = "b45775776cb224c75bcde7ca3704e933"
UID = "04996c6a926980"
TAP = ("4E2E289D945A66BB13377A728884E867", "E19CCB1FED8892CE")  # counter 3


@pytest.fixture
def cli(db_url: str, master_key_hex: str, monkeypatch: pytest.MonkeyPatch, capsys):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLASH_DATABASE_URL", db_url)
    monkeypatch.setenv("FLASH_MASTER_KEY", master_key_hex)
    monkeypatch.setenv("FLASH_PUBLIC_URL", "https://cards.example.test")

    def run(*argv: str) -> tuple[int, Any, str]:
        code = main(["cards", *argv])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    return run


def import_args(*extra: str) -> list[str]:
    card = ["--store", "S1", "--pull-payment", "PP1", "--uid", UID, "--k1", K1, "--k2", K2]
    return ["import", *card, *extra]


def test_import_prints_the_card_with_its_id_and_no_keys(cli) -> None:  # type: ignore[no-untyped-def]
    code, card, _ = cli(
        "import",
        "--store", "S1", "--pull-payment", "PP1", "--uid", UID.upper(),
        "--k1", K1, "--k2", K2, "--k0", "11" * 16, "--k3", "33" * 16, "--k4", "44" * 16,
        "--counter", "2", "--alias", "front desk", "--tx-limit", "5000", "--day-limit", "20000",
    )  # fmt: skip
    assert code == 0
    assert len(card["id"]) == 32
    assert card["uid"] == UID
    assert card["alias"] == "front desk"
    assert card["last_counter"] == 2
    assert (card["tx_limit_sats"], card["day_limit_sats"]) == (5000, 20000)
    text = json.dumps(card)
    assert K1 not in text and K2 not in text


def test_list_show_alias_disable_enable_and_limits(cli) -> None:  # type: ignore[no-untyped-def]
    _, card, _ = cli(*import_args())
    card_id = card["id"]
    code, listing, _ = cli("list", "--store", "S1")
    assert code == 0 and [c["id"] for c in listing] == [card_id]
    assert K1 not in json.dumps(listing)
    assert cli("list", "--store", "other")[1] == []
    assert cli("show", card_id)[1]["id"] == card_id
    assert cli("alias", card_id, "till 2")[1]["alias"] == "till 2"
    assert cli("alias", card_id, "")[1]["alias"] is None
    assert cli("disable", card_id)[1]["enabled"] is False
    assert cli("enable", card_id)[1]["enabled"] is True
    changed = cli("limits", card_id, "--day-limit", "777")[1]
    assert changed["day_limit_sats"] == 777 and changed["tx_limit_sats"] == 100_000
    assert cli("limits", card_id)[1]["day_limit_sats"] == 777


def test_wipe_returns_the_keys_and_marks_the_card(cli) -> None:  # type: ignore[no-untyped-def]
    _, card, _ = cli(*import_args("--k0", "11" * 16))
    code, wiped, _ = cli("wipe", card["id"])
    assert code == 0
    assert wiped["card"]["wiped"] is True and wiped["card"]["enabled"] is False
    assert wiped["wipe"]["action"] == "wipe"
    assert (wiped["wipe"]["k0"], wiped["wipe"]["k1"], wiped["wipe"]["k2"]) == ("11" * 16, K1, K2)
    assert wiped["wipe"]["k3"] is None
    code, _, err = cli("enable", card["id"])
    assert code == 1 and "wiped" in err


def test_add_prints_programmer_json_and_reprogramming_bumps_the_key_version(cli) -> None:  # type: ignore[no-untyped-def]
    code, added, _ = cli("add", "--store", "S2", "--pull-payment", "PP2", "--uid", "04a39493cc8680")
    assert code == 0
    programmer = added["programmer"]
    assert programmer["protocol_name"] == "create_bolt_card_response"
    assert programmer["lnurlw_base"] == "lnurlw://cards.example.test/boltcard"
    assert added["card"]["key_version"] == 1
    code, _, err = cli("add", "--store", "S2", "--pull-payment", "PP2", "--uid", "04a39493cc8680")
    assert code == 1 and "already registered" in err and err.count("\n") == 1
    cli("wipe", added["card"]["id"])
    code, again, _ = cli("add", "--store", "S2", "--pull-payment", "PP2", "--uid", "04a39493cc8680")
    assert code == 0
    assert again["card"]["id"] == added["card"]["id"]
    assert again["card"]["key_version"] == 2 and again["card"]["enabled"] is True
    assert again["programmer"]["k2"] != programmer["k2"]
    assert again["programmer"]["k1"] == programmer["k1"]  # K1 is the store issuer's


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--uid", "04996c6a92"], "UID must be 14 hex characters"),
        (["--uid", "zz996c6a926980"], "UID is not hexadecimal"),
        (["--k1", "00"], "K1 must be 32 hex characters"),
        (["--counter", "16777216"], "counter must be within"),
    ],
)
def test_bad_input_is_one_line_and_exit_one(cli, argv: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    base = {"--uid": UID, "--k1": K1, "--k2": K2}
    extra: list[str] = []
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        if flag in base:
            base[flag] = value
        else:
            extra += [flag, value]
    args = ["import", "--store", "S1", "--pull-payment", "PP1"]
    for flag, value in base.items():
        args += [flag, value]
    code, out, err = cli(*args, *extra)
    assert code == 1 and out is None
    assert message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_unknown_card_is_one_line(cli) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("show", "nope")
    assert code == 1 and err.strip() == "flash-payouts: error: no card nope"


async def test_card_imported_on_the_command_line_taps_at_the_gateway(
    db_url: str, master_key_hex: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FLASH_DATABASE_URL", db_url)
    monkeypatch.setenv("FLASH_MASTER_KEY", master_key_hex)
    engine = create_engine(db_url)
    app = create_app(
        engine, SecretBox.from_text(master_key_hex), GatewayConfig(public_url="https://x.test")
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        # The command runs its own event loop: give it a thread, as a separate process would.
        code = await asyncio.to_thread(main, ["cards", *import_args()])
        capsys.readouterr()
        assert code == 0
        await asyncio.sleep(1.05)  # the gateway's key reload interval
        resp = await client.get(f"/boltcard?p={TAP[0]}&c={TAP[1]}")
        assert (await resp.json())["tag"] == "withdrawRequest"
    finally:
        await client.close()
        await engine.dispose()
