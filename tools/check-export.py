#!/usr/bin/env python3
"""Checks a `rofr export` file with the validator of the tool it is for.

    check-export.py skypilot FILE    SkyPilot's own config schema (PyPI `skypilot`)
    check-export.py dstack FILE      dstack's fleet configuration model (PyPI `dstack`)
    check-export.py karpenter FILE   the EC2NodeClass CRD's OpenAPI schema; the CRD file
                                     comes from --crd or KARPENTER_CRD
    check-export.py focus FILE       the FOCUS validator (PyPI `focus-validator`), run
                                     as the program named by --focus-validator or
                                     FOCUS_VALIDATOR (default `focus-validator`)

Prints `ok: …` and exits 0 when the file passes; prints what failed and exits 1;
exits 2 when the validator is not installed, saying how to install it.
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile


def missing(what, how):
    print(f"missing: {what} ({how})", file=sys.stderr)
    sys.exit(2)


def documents(path):
    import yaml

    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check_skypilot(path, _args):
    try:
        from sky.utils import common_utils, schemas
    except ImportError:
        missing("skypilot", "python3 -m pip install skypilot")
    docs = documents(path)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise ValueError("a SkyPilot config is one YAML mapping")
    common_utils.validate_schema(docs[0], schemas.get_config_schema(), "invalid SkyPilot config: ")
    clouds = {c: len(v.get("specific_reservations", [])) for c, v in docs[0].items()}
    return f"SkyPilot config with reservations {clouds}"


def check_dstack(path, _args):
    try:
        from dstack._internal.core.models.configurations import parse_apply_configuration
        from dstack._internal.core.models.fleets import FleetConfiguration
    except ImportError:
        missing("dstack", "python3 -m pip install dstack")
    docs = documents(path)
    for i, doc in enumerate(docs):
        conf = parse_apply_configuration(doc)
        if not isinstance(conf, FleetConfiguration):
            raise ValueError(f"document {i + 1} is a {type(conf).__name__}, not a fleet")
    return f"{len(docs)} dstack fleet configurations"


def check_karpenter(path, args):
    try:
        import jsonschema
        import yaml
    except ImportError:
        missing("jsonschema and PyYAML", "python3 -m pip install jsonschema pyyaml")
    crd_path = args.crd or os.environ.get("KARPENTER_CRD")
    if not crd_path or not os.path.exists(crd_path):
        missing(
            "the Karpenter EC2NodeClass CRD",
            "set KARPENTER_CRD to karpenter.k8s.aws_ec2nodeclasses.yaml from the Karpenter release",
        )
    with open(crd_path, encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    docs = documents(path)
    terms = 0
    for i, doc in enumerate(docs):
        api_version = doc.get("apiVersion", "")
        version = next(
            (v for v in crd["spec"]["versions"] if f"{group}/{v['name']}" == api_version), None
        )
        if version is None or doc.get("kind") != kind:
            raise ValueError(f"document {i + 1}: not a {kind} of {group}: {api_version} {doc.get('kind')}")
        spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        # A patch holds some of the spec: every key must be one the CRD has, valid by
        # the CRD's own schema for it.
        for key, value in (doc.get("spec") or {}).items():
            if key not in spec_schema["properties"]:
                raise ValueError(f"document {i + 1}: spec.{key} is not in the CRD")
            jsonschema.validate(value, spec_schema["properties"][key])
        for term in (doc.get("spec") or {}).get("capacityReservationSelectorTerms", []):
            # The CRD's CEL rule: an id stands alone in its term.
            if "id" in term and len(term) > 1:
                raise ValueError(f"document {i + 1}: a term with an id has other fields")
            terms += 1
    return f"{len(docs)} {kind} patch(es) with {terms} capacity reservation terms"


# The FOCUS validator on PyPI (1.0.0, rules for FOCUS 0.5 and 1.0) names four columns
# as FOCUS did before 1.0's release, where FOCUS 1.0 to 1.2 name them as the export
# does; and one of its rules reads ChargeCategory by its older name, ChargeType.
VALIDATOR_NAMES = {
    "ProviderName": "Provider",
    "PublisherName": "Publisher",
    "InvoiceIssuerName": "InvoiceIssuer",
    "ResourceId": "ResourceID",
}


def check_focus(path, args):
    program = args.focus_validator or os.environ.get("FOCUS_VALIDATOR", "focus-validator")
    if shutil.which(program) is None:
        missing("focus-validator", "python3 -m pip install focus-validator")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError("an empty file")
    header = [VALIDATOR_NAMES.get(c, c) for c in rows[0]]
    category = rows[0].index("ChargeCategory")
    header.append("ChargeType")
    # The validator opens its list of currency codes by a path relative to the working
    # directory: run it where its package lies.
    python = os.path.join(os.path.dirname(shutil.which(program)), "python3")
    package_dir = subprocess.run(
        [python if os.path.exists(python) else sys.executable, "-c",
         "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        renamed = os.path.join(tmp, "focus.csv")
        with open(renamed, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(row + [row[category]] for row in rows[1:])
        out = subprocess.run(
            [program, "--data-file", renamed, "--validate-version", "1.0", "--output-type", "console"],
            capture_output=True,
            text=True,
            cwd=package_dir or None,
        )
    text = out.stdout + out.stderr
    # It exits 0 whatever it finds: what it prints says.
    if out.returncode != 0 or "failed" in text.lower() or "Traceback" in text:
        raise ValueError(f"focus-validator: exit {out.returncode}\n{text}")
    return f"{len(rows) - 1} FOCUS rows pass focus-validator (rules of FOCUS 1.0)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=["skypilot", "dstack", "karpenter", "focus"])
    parser.add_argument("file")
    parser.add_argument("--crd")
    parser.add_argument("--focus-validator")
    args = parser.parse_args()
    check = globals()[f"check_{args.format}"]
    try:
        said = check(args.file, args)
    except Exception as e:  # every validator's own error, said as it says it
        print(f"invalid {args.format} export {args.file}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {said}")


if __name__ == "__main__":
    main()
