"""Selling credits through Stripe: credit packages, Checkout, the webhook receiver, the
billing worker (purchases, refunds and disputes, auto top-up) and low-balance notifications."""
