"""Spreadsheet exports (.xlsx): the API's JSON rows as typed cells, a summary sheet that totals
them as ``/payouts/stats`` does, and text that no spreadsheet runs as a formula.

Each file is opened with openpyxl, and converted to CSV by LibreOffice where it is installed
(CI installs it: Debian's libreoffice-calc-nogui).
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest
from api_fixtures import STORE_A, add_card, client_on, shared_ledger, summary_tables
from conftest import service_missing

from api.spreadsheet import MEDIA_TYPE, currency_decimals
from ledger.payouts import CardLink, PayoutRecord, upsert_payout
from ledger.stores import upsert_store
from ledger.tokens import create_token

P = "/plugins/flash/api"
DAY = datetime(2024, 6, 3, tzinfo=UTC)
# (currency, amount) pairs: decimals 2, 0, 8 and 0, as the spreadsheet must show them.
MONEY = [
    ("USD", Decimal("12.5")),
    ("JPY", Decimal("1500")),
    ("BTC", Decimal("0.00012345")),
    ("SATS", Decimal("2100")),
    ("EUR", Decimal("0.99")),
]
STATES = ("AwaitingApproval", "AwaitingPayment", "InProgress", "Completed", "Cancelled")
HOSTILE = '=HYPERLINK("http://evil.example","click")'


class World:
    def __init__(self, token: str) -> None:
        self.auth = {"Authorization": f"Bearer {token}"}


async def fill(engine) -> World:
    """Three days of payouts in five currencies, some on cards, one with a hostile error text."""
    async with engine.begin() as conn:
        await upsert_store(conn, STORE_A, name="A")
        _, token = await create_token(conn, STORE_A, "viewer", "sheets")
    for card in ("card1", "card2", "card3"):
        await add_card(engine, card, STORE_A, alias=f"till {card[-1]}")
    await add_card(engine, "card4", STORE_A, alias=HOSTILE)
    for i in range(45):
        currency, amount = MONEY[i % len(MONEY)]
        state = STATES[i % len(STATES)]
        card = ("card1", "card2", "card3", "card4", None)[i % 5 if i % 7 else 4]
        record = PayoutRecord(
            id=f"pay{i:03d}",
            store_id=STORE_A,
            state=state,
            revision=2,
            created_at=DAY + timedelta(minutes=97 * i, microseconds=1000 * i),
            pull_payment_id="pp1",
            original_amount=amount,
            original_currency=currency,
            payout_amount=Decimal(i + 1) / Decimal(100_000_000) * 1000,
            payout_currency="BTC",
            payout_method_id="BTC-LN",
            destination="lnbc1" + f"{i:03d}",
            amount_sats=1000 * (i + 1),
            error_message=HOSTILE if state == "Cancelled" else None,
        )
        async with engine.begin() as conn:
            link = CardLink(card, "04a1b2c3d4e5f6") if card else None
            await upsert_payout(conn, record, source="reconcile", card=link)
    return World(token)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ledger(request, tmp_path_factory):
    yield from shared_ledger(request.param, tmp_path_factory, fill)


@pytest.fixture
async def client(ledger, aiohttp_client):
    url, world = ledger
    async with client_on(aiohttp_client, url, export_batch=7) as (_, c):
        yield world, c


async def fetch_xlsx(client, path: str, params: dict, auth: dict, tmp_path: Path) -> Path:
    r = await client.get(f"{P}{path}", params={**params, "format": "xlsx"}, headers=auth)
    assert r.status == 200, await r.text()
    assert r.headers["Content-Type"] == MEDIA_TYPE
    assert r.headers["Content-Disposition"].endswith('.xlsx"')
    body = await r.read()
    assert int(r.headers["Content-Length"]) == len(body)
    out = tmp_path / f"{path.strip('/').replace('/', '-')}.xlsx"
    out.write_bytes(body)
    return out


def sheet_rows(ws) -> list[dict]:
    rows = list(ws.iter_rows(values_only=True))
    header = rows[0]
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]


def instant(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def same_instant(cell: datetime | None, text: str | None) -> bool:
    """Excel keeps times to the millisecond; the API gives microseconds."""
    if cell is None or text is None:
        return cell is None and text is None
    return abs(cell - instant(text)) < timedelta(milliseconds=1)


async def test_payout_spreadsheet_has_the_json_rows_as_typed_cells(client, tmp_path):
    world, c = client
    query = {"storeId": STORE_A, "startDate": "2024-06-03", "endDate": "2024-06-04"}
    items = await (
        await c.get(f"{P}/payouts/export", params={**query, "format": "json"}, headers=world.auth)
    ).json()
    assert len(items) > 20
    path = await fetch_xlsx(c, "/payouts/export", query, world.auth, tmp_path)

    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Summary", "payouts"]
    ws = book["payouts"]
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == f"A1:U{len(items) + 1}"
    rows = sheet_rows(ws)
    assert len(rows) == len(items)
    for cells, item in zip(rows, items, strict=True):
        assert cells["payoutId"] == item["payoutId"]
        assert cells["status"] == item["status"]
        assert isinstance(cells["amount"], int | float)
        assert Decimal(str(cells["amount"])) == Decimal(item["amount"])
        assert isinstance(cells["amountSats"], int) and cells["amountSats"] == item["amountSats"]
        assert isinstance(cells["revision"], int) and cells["revision"] == item["revision"]
        assert isinstance(cells["createdAt"], datetime)
        assert same_instant(cells["createdAt"], item["createdAt"])
        assert same_instant(cells["completedAt"], item["completedAt"])
    # Each amount is shown with its currency's decimals.
    header = [cell.value for cell in ws[1]]
    amount_col, currency_col = header.index("amount"), header.index("currency")
    seen = {}
    for row in ws.iter_rows(min_row=2):
        seen[row[currency_col].value] = row[amount_col].number_format
    assert seen == {
        "USD": "#,##0.00",
        "EUR": "#,##0.00",
        "JPY": "#,##0",
        "BTC": "#,##0.00000000",
        "SATS": "#,##0",
    }
    assert ws.cell(2, header.index("createdAt") + 1).number_format == "yyyy-mm-dd hh:mm:ss"


async def test_payout_summary_sheet_totals_match_the_stats_of_the_same_days(client, tmp_path):
    world, c = client
    query = {"storeId": STORE_A, "startDate": "2024-06-03", "endDate": "2024-06-04"}
    stats = await (await c.get(f"{P}/payouts/stats", params=query, headers=world.auth)).json()
    path = await fetch_xlsx(c, "/payouts/export", query, world.auth, tmp_path)
    tables = summary_tables(openpyxl.load_workbook(path)["Summary"])

    by_status = {r["Status"]: r for r in tables["Totals by status"]}
    for status, want in stats["byStatus"].items():
        assert by_status[status]["Payouts"] == want["count"]
        assert by_status[status]["Value (sats)"] == want["amountSats"]
    assert by_status["Total"]["Payouts"] == stats["totalCount"]
    assert by_status["Total"]["Value (sats)"] == stats["totalAmountSats"]

    amounts: dict[str, Decimal] = {}
    for r in tables["Amounts by currency"]:
        amounts[r["Currency"]] = amounts.get(r["Currency"], Decimal(0)) + Decimal(str(r["Amount"]))
    assert amounts == {k: Decimal(v) for k, v in stats["totalAmountByCurrency"].items()}

    top = [(r["Card"], r["Payouts"], r["Value (sats)"]) for r in tables["Top cards"]]
    want = [(t["boltcardId"], t["totalPayouts"], t["totalAmount"]) for t in stats["topCards"]]
    assert top == want


async def test_usage_spreadsheet_matches_the_usage_json_and_its_summary_the_stats(client, tmp_path):
    world, c = client
    query = {"storeId": STORE_A, "startDate": "2024-06-03", "endDate": "2024-06-05"}
    items = await (
        await c.get(
            f"{P}/boltcards/usage/export", params={**query, "format": "json"}, headers=world.auth
        )
    ).json()
    stats = await (await c.get(f"{P}/payouts/stats", params=query, headers=world.auth)).json()
    path = await fetch_xlsx(c, "/boltcards/usage/export", query, world.auth, tmp_path)
    book = openpyxl.load_workbook(path)
    assert book.sheetnames == ["Summary", "boltcard-usage"]
    ws = book["boltcard-usage"]
    assert ws.freeze_panes == "A2" and ws.auto_filter.ref == f"A1:H{len(items) + 1}"
    rows = sheet_rows(ws)
    assert [r["boltcardId"] for r in rows] == [i["boltcardId"] for i in items]
    for cells, item in zip(rows, items, strict=True):
        for key in ("totalPayouts", "totalAmount", "taps", "refusedTaps"):
            assert isinstance(cells[key], int) and cells[key] == item[key]
        assert same_instant(cells["lastUsed"], item["lastUsed"])
    tables = summary_tables(book["Summary"])
    total = next(r for r in tables["Totals by status"] if r["Status"] == "Total")
    assert (total["Payouts"], total["Value (sats)"]) == (
        stats["totalCount"],
        stats["totalAmountSats"],
    )
    assert [r["Card"] for r in tables["Top cards"]] == [t["boltcardId"] for t in stats["topCards"]]


async def test_spreadsheet_text_never_becomes_a_formula(client, tmp_path):
    world, c = client
    query = {"storeId": STORE_A, "status": "Failed"}
    path = await fetch_xlsx(c, "/payouts/export", query, world.auth, tmp_path)
    ws = openpyxl.load_workbook(path)["payouts"]
    header = [cell.value for cell in ws[1]]
    col = header.index("errorMessage")
    cells = [row[col] for row in ws.iter_rows(min_row=2)]
    assert cells
    for cell in cells:
        assert cell.data_type == "s"
        assert cell.value == "'" + HOSTILE
    usage = openpyxl.load_workbook(
        await fetch_xlsx(c, "/boltcards/usage/export", {"storeId": STORE_A}, world.auth, tmp_path)
    )["boltcard-usage"]
    aliases = {row[1].value: row[1].data_type for row in usage.iter_rows(min_row=2)}
    assert aliases["'" + HOSTILE] == "s"


async def test_empty_spreadsheet_has_the_header_and_a_summary_of_nothing(client, tmp_path):
    world, c = client
    query = {"storeId": STORE_A, "startDate": "2030-01-01"}
    book = openpyxl.load_workbook(
        await fetch_xlsx(c, "/payouts/export", query, world.auth, tmp_path)
    )
    ws = book["payouts"]
    assert [cell.value for cell in ws[1]][:2] == ["payoutId", "pullPaymentId"]
    assert ws.max_row == 1
    tables = summary_tables(book["Summary"])
    assert next(r for r in tables["Totals by status"] if r["Status"] == "Total")["Payouts"] == 0
    assert tables["Top cards"] == []


async def test_an_unknown_format_is_a_400_naming_it(client):
    world, c = client
    r = await c.get(f"{P}/payouts/export", params={"format": "xls"}, headers=world.auth)
    assert r.status == 400
    assert (await r.json())["message"].startswith("format:")


def test_currency_decimals_follow_iso_4217_and_btcpay_for_bitcoin():
    assert [currency_decimals(c) for c in ("USD", "JPY", "KWD", "BTC", "SATS", "btc", None)] == [
        2,
        0,
        3,
        8,
        0,
        8,
        2,
    ]


# --- LibreOffice --------------------------------------------------------------------------------


def soffice() -> str:
    found = shutil.which("soffice")
    if not found:
        service_missing("LibreOffice is not installed (Debian package libreoffice-calc-nogui)")
    return str(found)


def libreoffice_csv(path: Path, tmp_path: Path) -> dict[str, list[dict[str, str]]]:
    """Every sheet of ``path`` as LibreOffice's CSV of the cells' values, by sheet name."""
    # Its own profile: parallel conversions would otherwise fight over one lock.
    profile = (tmp_path / "lo-profile").as_uri()
    out_dir = tmp_path / "lo-out"
    # Comma, double quote, UTF-8, from line 1, ..., values not as shown, every sheet (-1).
    filt = "csv:Text - txt - csv (StarCalc):44,34,UTF8,1,,0,false,true,false,false,false,-1"
    done = subprocess.run(
        [
            soffice(),
            f"-env:UserInstallation={profile}",
            "--headless",
            "--convert-to",
            filt,
            "--outdir",
            str(out_dir),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sheets = {}
    for f in out_dir.glob(f"{path.stem}-*.csv"):
        sheets[f.stem.removeprefix(path.stem + "-")] = list(
            csv.DictReader(io.StringIO(f.read_text(encoding="utf-8")))
        )
    return sheets


async def test_libreoffice_reads_the_payout_spreadsheet_as_the_api_json(client, tmp_path):
    world, c = client
    query = {"storeId": STORE_A}
    items = await (
        await c.get(f"{P}/payouts/export", params={**query, "format": "json"}, headers=world.auth)
    ).json()
    path = await fetch_xlsx(c, "/payouts/export", query, world.auth, tmp_path)
    sheets = libreoffice_csv(path, tmp_path)
    assert set(sheets) == {"Summary", "payouts"}
    rows = sheets["payouts"]
    assert len(rows) == len(items)
    for row, item in zip(rows, items, strict=True):
        assert row["payoutId"] == item["payoutId"]
        assert Decimal(row["amount"]) == Decimal(item["amount"])
        assert int(row["amountSats"]) == item["amountSats"]
        assert row["createdAt"] == instant(item["createdAt"]).strftime("%Y-%m-%d %H:%M:%S")
        # LibreOffice's own CSV keeps our quote: opening it cannot run the text either.
        if item["errorMessage"] is not None:
            assert row["errorMessage"] == "'" + item["errorMessage"]
