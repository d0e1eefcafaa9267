"""Amounts in a currency's minor unit, as Stripe's API takes them
(https://docs.stripe.com/currencies#zero-decimal): cents for USD (500 = 5.00 USD), the whole
unit for zero-decimal currencies (500 = 500 JPY), thousandths for three-decimal ones, whose
amounts Stripe requires to end in 0 (5120 = 5.120 KWD); ISK is zero-decimal but still given
with two decimals, so its amounts must be whole kronur (500 = 5 ISK)."""

from __future__ import annotations

ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()  # noqa: SIM905
)
THREE_DECIMAL = frozenset(("bhd", "jod", "kwd", "omr", "tnd"))


def exponent(currency: str) -> int:
    """Digits after the decimal point in the API's amounts."""
    c = currency.lower()
    if c in ZERO_DECIMAL:
        return 0
    if c in THREE_DECIMAL:
        return 3
    return 2


def problem(amount: int, currency: str) -> str | None:
    """Why Stripe would refuse ``amount`` in ``currency``, or None."""
    c = currency.lower()
    if c in THREE_DECIMAL and amount % 10:
        return f"{c.upper()} amounts must end in 0 (Stripe rounds three-decimal currencies to tens)"
    if c == "isk" and amount % 100:
        return "ISK amounts are whole kronur given with two decimals: a multiple of 100"
    return None


def display(amount: int, currency: str) -> str:
    """``amount`` as a person reads it: 500 usd -> "5.00 USD", 500 jpy -> "500 JPY"."""
    e = exponent(currency)
    sign, n = ("-", -amount) if amount < 0 else ("", amount)
    whole, frac = divmod(n, 10**e)
    text = f"{whole}.{frac:0{e}d}" if e else str(whole)
    return f"{sign}{text} {currency.upper()}"
