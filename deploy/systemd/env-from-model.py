#!/usr/bin/env python3
"""Prints the /etc/parley/NAME.env of parleyd@NAME.service for the parleyd that `parley up` runs
for a model directory: the same knowledge base, state directories, addresses and certificates as
the command line `up` starts it with, so that the CLI recognises the parleyd systemd runs.

  deploy/systemd/env-from-model.py [MODEL_DIR] > /etc/parley/NAME.env

MODEL_DIR defaults to $PARLEY_MODEL_DIR, else ./.parley (docs/deploy.md, "Running parleyd under
systemd").
"""
import json
import os
import sys


def main():
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1].startswith("-")):
        sys.exit(__doc__.strip())
    d = sys.argv[1] if len(sys.argv) == 2 else os.environ.get("PARLEY_MODEL_DIR", ".parley")
    d = os.path.abspath(d)
    path = os.path.join(d, "model.json")
    try:
        with open(path) as f:
            model = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit("env-from-model: %s: %s" % (path, e))
    if model.get("runtime", {}).get("engine"):
        sys.exit("env-from-model: %s: the model runs its units in %s containers; it has no local "
                 "parleyd to hand to systemd" % (path, model["runtime"]["engine"]))
    host = model.get("host", {})
    for field in ("address", "data_dir", "state_dir"):
        if not host.get(field):
            sys.exit("env-from-model: %s: host.%s is not recorded: run `parley up MODEL` first"
                     % (path, field))
    print("# parleyd of the model in %s (deploy/systemd/env-from-model.py)" % d)
    print("PARLEY_DATA=" + host["data_dir"])
    print("PARLEY_STATE_DIR=" + host["state_dir"])
    print("PARLEY_LISTEN=" + host["address"])
    print("PARLEY_METRICS_LISTEN=" + host.get("metrics_address", ""))
    print("PARLEY_ADDRESS_FILE=" + os.path.join(d, "parleyd.address"))
    if model.get("tls"):
        print("PARLEY_PLAINTEXT=false")
        for key in ("cert", "key", "ca"):
            print("PARLEY_TLS_%s=%s" % (key.upper(), os.path.join(d, "pki", "local", key + ".pem")))
    else:
        print("PARLEY_PLAINTEXT=true")


if __name__ == "__main__":
    main()
