"""The billing tables in SQL, one store per kind of thing stored: credit packages, billing
customers, the Stripe event inbox, purchases, auto top-ups and notifications. Every store
shares one ``Sql`` (its ``tx()`` is the one place a failure to reach SQL becomes a 503), and
every write that can race is one conditional statement (an upsert, or an UPDATE … WHERE that
states what must still hold), so several workers and sidecars can share the tables."""

from sidecar.billing.stores.customers import CustomerStore
from sidecar.billing.stores.events import EventStore
from sidecar.billing.stores.notifications import NotificationStore
from sidecar.billing.stores.packages import Package, PackageStore
from sidecar.billing.stores.purchases import PurchaseStore
from sidecar.billing.stores.sql import Sql
from sidecar.billing.stores.topups import TopUpStore

__all__ = [
    "CustomerStore",
    "EventStore",
    "NotificationStore",
    "Package",
    "PackageStore",
    "PurchaseStore",
    "Sql",
    "TopUpStore",
]
