#!/usr/bin/env python3
"""Peer for the Azurite-to-Azurite benchmark: copy every blob of one container to
another endpoint with the official Azure SDK for Python, N threads (download, upload).

usage: azure_sdk_copy.py SRC_ENDPOINT SRC_CONTAINER DST_ENDPOINT DST_CONTAINER THREADS
"""
import sys
from concurrent.futures import ThreadPoolExecutor

from azure.storage.blob import BlobServiceClient

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def client(endpoint):
    return BlobServiceClient(account_url=endpoint, credential={"account_name": ACCOUNT, "account_key": KEY})


def main():
    src_ep, src_c, dst_ep, dst_c, threads = sys.argv[1:6]
    src = client(src_ep).get_container_client(src_c)
    dst = client(dst_ep).get_container_client(dst_c)

    def copy(name):
        data = src.download_blob(name).readall()
        dst.upload_blob(name, data, overwrite=True)
        return len(data)

    with ThreadPoolExecutor(int(threads)) as pool:
        total = sum(pool.map(copy, (b.name for b in src.list_blobs())))
    print(f"copied {total} bytes")


if __name__ == "__main__":
    main()
