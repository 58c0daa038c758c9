"""Start moto's server with two local-only speed fixes to its DynamoDB.

moto 5.2.5 deep-copies the whole table once for *every item* of a transaction (to roll back on
failure), so a 100-item transaction on a 10,000-item table copies a million items, and a copy
taken while another request writes the same table fails with "dictionary changed size during
iteration". The pipeline writes every fact in a transaction, so that made moto the bottleneck of
every test and benchmark.

The fixes, applied to moto's own code at start-up (nothing of moto is copied into this repository):
1. TransactWriteItems: instead of copying tables, keep a copy of just the items the transaction names and put those back
if it fails (all-or-nothing, as before), and serialise DynamoDB writes with one lock so nothing
interleaves with a transaction. Semantics are unchanged: all-or-nothing, same conditions, same
errors; the cost of a transaction is its own size, not its table's.
2. Query on a table's own key: moto sorted *every item of the table* and then kept those of the
asked partition, on every call (so each page of a 10,000-user directory cost the whole table), and
then sized every item of the partition on its way to the first one the key condition matches; it
now takes the partition's items directly and applies the key condition's sort-key part before that
walk (the same comparison moto makes inside it), then sorts, pages and filters exactly as before.
If moto's code no longer matches (another version), the server refuses to start rather than run
unpatched.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p 4566   (the same flags as moto_server)
"""
import copy
import inspect
import re
import sys
import textwrap
import threading

import moto.dynamodb.models as models
import moto.dynamodb.models.table as tables
from moto.server import main

COPY = "copy.deepcopy("


class _NoTableCopy:
    """Stands in for the `copy` module inside transact_write_items: its whole-table backup becomes
    a reference (a no-op rollback); `keeping_items` below does the rollback instead."""

    @staticmethod
    def deepcopy(value):
        return value


def _target(backend, op_type: str, op: dict):
    """(table name, key) of one transaction item, or None if it is malformed (moto reports that)."""
    table_name = op.get("TableName")
    if not table_name or table_name not in backend.tables:
        return None
    table = backend.tables[table_name]
    if op_type == "Put":
        attrs = op.get("Item") or {}
        if table.hash_key_attr not in attrs:
            return None
        key = {table.hash_key_attr: attrs[table.hash_key_attr]}
        if table.range_key_attr is not None:
            if table.range_key_attr not in attrs:
                return None
            key[table.range_key_attr] = attrs[table.range_key_attr]
        return table_name, key
    key = op.get("Key")
    return (table_name, key) if key else None


def keeping_items(method):
    """Run a transaction; if it raises, put back every item it names as it was before."""

    def run(self, transact_items, *args, **kwargs):
        saved = []
        for item in transact_items:
            try:
                op_type, op = next(iter(item.items()))
                target = _target(self, op_type, op)
                if target is None:
                    continue
                current = self.get_item(*target)
                saved.append((target, copy.deepcopy(current.to_json()["Attributes"]) if current else None))
            except Exception:  # a malformed item: moto's own checks will refuse it
                continue
        try:
            return method(self, transact_items, *args, **kwargs)
        except Exception:
            for (table_name, key), attrs in reversed(saved):
                if attrs is None:
                    self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, attrs)
            raise

    run.__name__ = method.__name__
    return run


QUERY_SCAN = re.compile(
    r"for item in self\.all_items\(\)\s*\n\s*if isinstance\(item, Item\) and item\.hash_key == hash_key"
)


def _partition(table, hash_key):
    """The items of one partition (moto keeps them by hash key), without creating it."""
    found = table.items.get(hash_key)
    if found is None:
        return []
    return list(found.values()) if table.range_key_attr else [found]


def _narrow(items, index_name, last_range_key_name, range_comparison, range_objs):
    """A table query's sort-key condition, applied before moto walks the partition (moto makes the
    same comparison inside its walk, after sizing each item it passes)."""
    if index_name or not range_comparison:
        return items
    if last_range_key_name:
        kept = []
        for i in items:
            value = i.attrs.get(last_range_key_name)
            if value and value.compare(range_comparison, range_objs):
                kept.append(i)
        return kept
    return [i for i in items if i.range_key is not None and i.range_key.compare(range_comparison, range_objs)]


FILTER = "\n    # FILTER\n"
NARROW = (
    "\n    possible_results = _narrow(possible_results, index_name, last_range_key_name,"
    " range_comparison, range_objs)\n    # FILTER\n"
)


def patch_query() -> None:
    source = textwrap.dedent(inspect.getsource(tables.Table.query))
    if len(QUERY_SCAN.findall(source)) != 1 or source.count(FILTER) != 1 or "last_range_key_name" not in source:
        sys.exit("moto_server.py: moto's Table.query is not the expected code; not starting")
    env = dict(tables.__dict__)
    env["_partition"] = _partition
    env["_narrow"] = _narrow
    scope: dict = {}
    fixed = QUERY_SCAN.sub("for item in _partition(self, hash_key)\n if isinstance(item, Item)", source)
    fixed = fixed.replace(FILTER, NARROW)
    exec(compile(fixed, tables.__file__, "exec"), env, scope)
    tables.Table.query = scope["query"]


def patch() -> None:
    source = textwrap.dedent(inspect.getsource(models.DynamoDBBackend.transact_write_items))
    if source.count(COPY) != 1 or "original_table_state" not in source:
        sys.exit("moto_server.py: moto's transact_write_items is not the expected code; not starting")
    scope: dict = {}
    env = dict(models.__dict__)
    env["copy"] = _NoTableCopy
    exec(compile(source, models.__file__, "exec"), env, scope)
    fixed = keeping_items(scope["transact_write_items"])
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
    patch_query()
    main(sys.argv[1:])
