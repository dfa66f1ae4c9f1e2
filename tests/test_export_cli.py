"""`flash-payouts export ...`: the API's exports from the command line, and one-line errors."""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import io
import json
from datetime import timedelta
from decimal import Decimal

import openpyxl
import pytest
from api_fixtures import BASE, STORE_A, seed

from flash_payouts.cli import main


@pytest.fixture
async def seeded(engine, db_url, master_key_hex, monkeypatch):
    s = await seed(engine, n_a=25, n_b=4)
    monkeypatch.setenv("FLASH_DATABASE_URL", db_url)
    return s


def await_main(capsys, *argv: str) -> tuple[int, bytes, str]:
    # The command runs its own event loop, so it runs in a thread beside the test's.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        code = pool.submit(main, ["export", *argv]).result()
    out, err = capsys.readouterr()
    return code, out.encode(), err


async def test_payout_export_to_stdout_and_to_a_file_in_every_format(seeded, capsys, tmp_path):
    want = sorted(
        (p for p in seeded.of(STORE_A) if p.status == "Completed"),
        key=lambda p: (p.created_at, p.id),
        reverse=True,
    )
    code, out, _ = await_main(capsys, "payouts", "--store", STORE_A, "--status", "completed")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out.decode())))
    assert [r["payoutId"] for r in rows] == [p.id for p in want]

    target = tmp_path / "completed.json"
    code, _, err = await_main(
        capsys, "payouts", "--store", STORE_A, "--status", "Completed", "--format", "json",
        "-o", str(target),
    )  # fmt: skip
    assert code == 0 and f"wrote {target}" in err
    items = json.loads(target.read_text())
    assert [i["payoutId"] for i in items] == [p.id for p in want]

    sheet = tmp_path / "completed.xlsx"
    code, _, _ = await_main(
        capsys, "payouts", "--store", STORE_A, "--status", "Completed", "--format", "xlsx",
        "--output", str(sheet),
    )  # fmt: skip
    assert code == 0
    ws = openpyxl.load_workbook(sheet)["payouts"]
    cells = list(ws.iter_rows(min_row=2, values_only=True))
    assert [c[0] for c in cells] == [p.id for p in want]
    assert [Decimal(str(c[3])) if c[3] is not None else None for c in cells] == [
        p.amount for p in want
    ]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


async def test_card_usage_export_for_a_period(seeded, capsys):
    day = (BASE + timedelta(days=2)).date().isoformat()
    code, out, _ = await_main(
        capsys, "card-usage", "--store", STORE_A, "--start", day, "--end", day, "--format", "json"
    )
    assert code == 0
    cards = json.loads(out)
    on_day = [p for p in seeded.of(STORE_A) if p.card_id and p.created_at.date().isoformat() == day]
    assert sum(c["totalPayouts"] for c in cards) == len(on_day)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["payouts", "--store", STORE_A, "--start", "yesterday"], "--start: "),
        (["payouts", "--store", STORE_A, "--status", "Lost"], "--status: 'Lost' is not one of"),
        (["payouts", "--store", "nostore"], "no store nostore in the ledger"),
        (["payouts", "--store", STORE_A, "-o", "/nonexistent/x.csv"], "no folder /nonexistent"),
    ],
)
async def test_bad_input_is_one_line_and_a_non_zero_exit(seeded, capsys, argv, message):
    code, out, err = await_main(capsys, *argv)
    assert code != 0 and not out
    assert err.startswith("flash-payouts: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_export_help_names_every_format() -> None:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["export", "payouts", "--help"])
    assert "csv,json,xlsx" in buf.getvalue().replace(" ", "")
