"""Expand a SAM template offline with samtranslator, so cfn-lint can check the generated CloudFormation.

Adapted from shared/reference/scripts/sam_expand.py: the expansion is also importable
(`expand(path) -> dict`) so infra/test_template.py can check the expanded template in-process.

Usage: python sam_expand.py TEMPLATE.yaml OUT.json
"""
import json
import logging
import os
import sys

os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# samtranslator warns at interpreter exit about metrics it never publishes offline; silence that.
logging.getLogger("samtranslator.metrics.metrics").setLevel(logging.ERROR)


class NoManagedPolicies:
    """Managed-policy loader that never calls IAM (offline; the template uses no managed policies)."""

    def load(self):
        return {}


def expand(src):
    from cfnlint.decode import decode
    from samtranslator.translator.transform import transform

    tpl, matches = decode(src)
    if tpl is None:
        raise SystemExit(f"cannot parse {src}: {matches}")
    for r in tpl.get("Resources", {}).values():
        if r.get("Type") == "AWS::Serverless::Function":
            # The real CodeUri points at the cargo workspace; sam build/package replace it.
            r.setdefault("Properties", {})["CodeUri"] = "s3://placeholder-bucket/placeholder.zip"
    out = transform(tpl, {}, NoManagedPolicies())
    # round-trip through JSON so the result is plain dicts/lists/strings
    return json.loads(json.dumps(out, default=str))


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]
    out = expand(src)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w") as f:
        json.dump(out, f, indent=1)
    print("expanded", len(out["Resources"]), "resources ->", dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
