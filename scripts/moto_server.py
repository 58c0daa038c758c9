"""Start moto's server with one local-only fix to its DynamoDB TransactWriteItems.

moto 5.2.5 deep-copies the whole table once for *every item* of a transaction (to roll back on
failure), so a 100-item transaction on a 10,000-item table copies a million items, and a copy
taken while another request writes the same table fails with "dictionary changed size during
iteration". The pipeline writes every fact in a transaction, so that made moto the bottleneck of
every test and benchmark.

The fix, applied to moto's own code at start-up (nothing of moto is copied into this repository):
copy each table once per transaction, and serialise DynamoDB writes with one lock so a copy never
races a write. Semantics are unchanged: all-or-nothing, same conditions, same errors. If moto's
code no longer matches (another version), the server refuses to start rather than run unpatched.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p 4566   (the same flags as moto_server)
"""
import inspect
import sys
import textwrap
import threading

import moto.dynamodb.models as models
from moto.server import main

ONCE = "if table_name and table_name in self.tables:"
ONCE_FIXED = "if table_name and table_name in self.tables and table_name not in original_table_state:"


def patch() -> None:
    source = textwrap.dedent(inspect.getsource(models.DynamoDBBackend.transact_write_items))
    if source.count(ONCE) != 1:
        sys.exit("moto_server.py: moto's transact_write_items is not the expected code; not starting")
    scope: dict = {}
    exec(compile(source.replace(ONCE, ONCE_FIXED), models.__file__, "exec"), models.__dict__, scope)
    fixed = scope["transact_write_items"]
    lock = threading.RLock()

    def serialised(method):
        def run(self, *args, **kwargs):
            with lock:
                return method(self, *args, **kwargs)

        run.__name__ = method.__name__
        return run

    models.DynamoDBBackend.transact_write_items = serialised(fixed)
    for name in ("put_item", "update_item", "delete_item", "batch_write_item"):
        if hasattr(models.DynamoDBBackend, name):
            setattr(models.DynamoDBBackend, name, serialised(getattr(models.DynamoDBBackend, name)))


if __name__ == "__main__":
    patch()
    main(sys.argv[1:])
