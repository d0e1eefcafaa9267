"""The SQL ledger of record (installed as ``sidecar.persistence``): models, migrations, the outbox
writer that streams Redis transactions into SQL, and the rebuild/reconcile tools."""
