"""A BTCPay Server 2.x stand-in speaking Greenfield payouts and webhooks over HTTP."""

from .app import RunningSimulator, create_app, run, serve, start
from .config import Faults, ProgressDelays, SimConfig
from .invoices import InvoiceMinter, MintedInvoice

__all__ = [
    "Faults",
    "InvoiceMinter",
    "MintedInvoice",
    "ProgressDelays",
    "RunningSimulator",
    "SimConfig",
    "create_app",
    "run",
    "serve",
    "start",
]
