"""The container's health check: the Open Inference Protocol's ready check on the inference
address of TorchServe's config (MAAS_TS_CONFIG), as the manifests' readiness probe sends it,
plus the inference key from key_file.json when token authorization is on. Exit 0 = healthy.

Standard library only: it runs every few seconds and must not import the serving stack.
"""
import json
import os
import sys
import urllib.request

CONFIG = os.environ.get("MAAS_TS_CONFIG", "/mnt/models/config/config.properties")


def inference_url() -> str:
    address = "http://127.0.0.1:8080"
    with open(CONFIG, encoding="utf-8") as lines:
        for line in lines:
            key, _, value = line.partition("=")
            if key.strip() == "inference_address":
                address = value.strip().replace("0.0.0.0", "127.0.0.1")
    return address.rstrip("/")


def headers() -> dict:
    try:
        with open("key_file.json", encoding="utf-8") as keys:  # TorchServe writes it into its cwd
            return {"Authorization": "Bearer " + json.load(keys)["inference"]["key"]}
    except (OSError, ValueError, KeyError):
        return {}


def main() -> int:
    request = urllib.request.Request(inference_url() + "/v2/health/ready", headers=headers())
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as error:
        print(f"not ready: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
