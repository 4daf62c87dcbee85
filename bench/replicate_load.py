#!/usr/bin/env python3
"""Steady write load for bench/replicate.sh.

Writes RATE objects per second of SIZE bytes for SECONDS into a source (a local folder,
or an Azure container through Azurite followed by an Event Grid event posted to the
georep webhook), while polling the daemon's API for the largest backlog. Afterwards it
waits for the backlog to drain and reads each object's change -> replicated latency from
georep's state database, and prints one JSON line of figures.
"""
import argparse
import json
import os
import sqlite3
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone


def api(base, path, token, body=None):
    req = urllib.request.Request(base + path, data=body, method="POST" if body else "GET")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if body:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["local", "azure"], required=True)
    ap.add_argument("--api", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--policy", required=True)
    ap.add_argument("--state", required=True, help="georep state database file")
    ap.add_argument("--src", help="local source folder")
    ap.add_argument("--endpoint", help="Azurite account endpoint, http://127.0.0.1:PORT/devstoreaccount1")
    ap.add_argument("--container")
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--prefix", default="load")
    a = ap.parse_args()

    payload = os.urandom(a.size)
    total = int(a.rate * a.seconds)
    upload = None
    if a.mode == "azure":
        from azure.storage.blob import BlobServiceClient

        key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
        svc = BlobServiceClient(a.endpoint, credential={"account_name": "devstoreaccount1", "account_key": key})
        cc = svc.get_container_client(a.container)

        def upload(name):
            cc.upload_blob(name, payload, overwrite=True)
            now = datetime.now(timezone.utc).isoformat()
            event = [{
                "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
                "subject": f"/blobServices/default/containers/{a.container}/blobs/{name}",
                "eventType": "Microsoft.Storage.BlobCreated",
                "eventTime": now,
                "id": name,
                "data": {"api": "PutBlob", "contentLength": a.size, "blobType": "BlockBlob"},
                "dataVersion": "",
                "metadataVersion": "1",
            }]
            api(a.api, f"/api/v1/events/{a.policy}", a.token, json.dumps(event).encode())
    else:
        def upload(name):
            path = os.path.join(a.src, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(payload)

    backlog = {"max": 0, "samples": [], "stop": False}

    def poll():
        while not backlog["stop"]:
            try:
                st = api(a.api, f"/api/v1/policies/{a.policy}", a.token)
                pending = sum(d["pending"] for d in st["destinations"])
                backlog["max"] = max(backlog["max"], pending)
                backlog["samples"].append((time.time(), pending))
            except Exception:
                pass
            time.sleep(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    late = 0
    start = time.time()
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = []
        for i in range(total):
            due = start + i / a.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.05:
                late += 1
            futures.append(pool.submit(upload, f"{a.prefix}/{i // 1000:03d}/{i:06d}.bin"))
        for f in futures:
            f.result()
    wrote = time.time() - start

    deadline = time.time() + 600
    while time.time() < deadline:
        st = api(a.api, f"/api/v1/policies/{a.policy}", a.token)
        if all(d["pending"] == 0 for d in st["destinations"]):
            break
        time.sleep(0.2)
    drained = time.time() - start - wrote
    backlog["stop"] = True
    poller.join()

    db = sqlite3.connect(f"file:{a.state}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT replicated_at - change_time FROM items WHERE policy = ? AND status = 'complete' "
        "AND key LIKE ? ORDER BY 1",
        (a.policy, a.prefix + "/%"),
    ).fetchall()
    lat = [r[0] for r in rows]
    # Backlog growth: compare the mean backlog of the first and last thirds of the run.
    during = [p for t, p in backlog["samples"] if t - start <= wrote]
    third = max(1, len(during) // 3)
    first, last = during[:third] or [0], during[-third:] or [0]
    print(json.dumps({
        "mode": a.mode,
        "objects": total,
        "replicated": len(lat),
        "rate_asked": a.rate,
        "rate_achieved": round(total / wrote, 1),
        "late_submissions": late,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "max_backlog": backlog["max"],
        "backlog_first_third": round(sum(first) / len(first), 1),
        "backlog_last_third": round(sum(last) / len(last), 1),
        "drain_seconds_after_writes": round(drained, 2),
    }))


if __name__ == "__main__":
    main()
