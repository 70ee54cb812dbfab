#!/usr/bin/env python3
"""Read a Security Lake source's Parquet files back with pyarrow and duckdb.

    python read_lake.py DIR

DIR holds the objects under their keys (`ext/SOURCE/region=…/accountId=…/eventDay=…/X.parquet`).
Prints one JSON object: per reader, the files and rows it read, the metadata.uid of every row,
and the types it sees for `time`, `metadata`, `dst_endpoint`, `unmapped`; duckdb also reads
the partitions from the paths, as Athena does. Exits 1 if a reader fails on any file.
"""

import json
import pathlib
import sys

import duckdb
import pyarrow.parquet as pq


def main():
    root = pathlib.Path(sys.argv[1])
    files = sorted(root.rglob("*.parquet"))
    out = {"files": len(files)}

    # pyarrow: each file alone, as a table.
    rows, uids, types, schemas = 0, [], {}, set()
    for f in files:
        t = pq.read_table(f)
        rows += t.num_rows
        uids += [m["uid"] for m in t.column("metadata").to_pylist()]
        schemas.add(str(t.schema))
        for name in ("time", "metadata", "dst_endpoint", "unmapped", "http_request"):
            if name in t.column_names:
                types[name] = str(t.schema.field(name).type)
    out["pyarrow"] = {"rows": rows, "uids": uids, "types": types, "schemas": len(schemas)}

    # duckdb: every file at once, with the partitions from the paths (hive style).
    con = duckdb.connect()
    glob = str(root / "**" / "*.parquet")
    rel = f"read_parquet('{glob}', hive_partitioning = true)"
    described = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()}
    count, distinct = con.execute(f"SELECT count(*), count(DISTINCT metadata.uid) FROM {rel}").fetchone()
    days = [r[0] for r in con.execute(f"SELECT DISTINCT eventDay FROM {rel} ORDER BY 1").fetchall()]
    sample = con.execute(
        f"SELECT metadata.uid, time, dst_endpoint.hostname, unmapped['effect'] FROM {rel} ORDER BY time LIMIT 1"
    ).fetchone()
    out["duckdb"] = {
        "rows": count,
        "distinct_uids": distinct,
        "types": {k: described.get(k) for k in ("time", "metadata", "unmapped", "region", "accountId", "eventDay")},
        "event_days": [str(d) for d in days],
        "sample": [str(x) for x in sample] if sample else None,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a reader that fails is the finding
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)
