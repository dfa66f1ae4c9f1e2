"""Scheduled reports: a period's payouts, cards and alerts, sent by email and to webhooks.

- ``periods``: days, weeks and months in the store's time zone, and which are due;
- ``compose``: a report from the ledger's reads (``ledger.report_figures``), and its JSON;
- ``render``: the email's plain text and HTML, and the attached spreadsheet;
- ``deliver``: SMTP (aiosmtplib) and webhook (aiohttp) sending, one attempt each;
- ``scheduler``: the loop `serve` runs: claim due periods in the ledger, send, retry.
"""
