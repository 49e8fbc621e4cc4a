"""Validates every seal.100monkeys.ai custom resource under the given folders against the CRD
schemas in charts/seal-gateway/crds, as the API server would (kubernetes-validate only checks
built-in kinds and the CRD objects themselves)."""
import glob
import sys

import jsonschema
import yaml

crds = {}
for path in glob.glob("charts/seal-gateway/crds/*.yaml"):
    with open(path) as f:
        crd = yaml.safe_load(f)
    for version in crd["spec"]["versions"]:
        key = (f'{crd["spec"]["group"]}/{version["name"]}', crd["spec"]["names"]["kind"])
        crds[key] = version["schema"]["openAPIV3Schema"]

failures = checked = 0
for folder in sys.argv[1:]:
    for path in sorted(glob.glob(f"{folder}/**/*.yaml", recursive=True)):
        with open(path) as f:
            for n, doc in enumerate(yaml.safe_load_all(f), start=1):
                if not isinstance(doc, dict) or not doc.get("apiVersion", "").startswith("seal.100monkeys.ai/"):
                    continue
                schema = crds.get((doc["apiVersion"], doc.get("kind")))
                if schema is None:
                    if doc.get("kind") == "SealGatewayConfig":
                        continue  # the standalone config file, not a custom resource
                    print(f"{path}: document {n}: no CRD for {doc['apiVersion']} {doc.get('kind')}")
                    failures += 1
                    continue
                checked += 1
                for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
                    field = ".".join(str(p) for p in error.absolute_path)
                    print(f"{path}: document {n}: {field}: {error.message}")
                    failures += 1
print(f"custom resources: {checked} checked, {failures} problems")
sys.exit(1 if failures or not checked else 0)
