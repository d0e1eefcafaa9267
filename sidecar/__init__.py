"""credit-sidecar: prepaid API credits enforced by an atomic Redis ledger."""

__version__ = "0.1.0"
