"""The ``ionn-catalog`` console script: fill, list and verify a model catalog directory.

``ionn-catalog add MODEL.keras DIR`` exports a Keras model file the operator owns into the
catalog (manifest and blobs, see :mod:`ionn_net.catalog`); it loads the file with Keras's
safe mode on and is meant for the operator's own files only: a server never loads a model
file, and nothing received over the network should ever be given to this command.
``ionn-catalog list DIR`` shows the models; ``ionn-catalog verify DIR`` validates every
entry as a server would and exits 1 if any is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from ionn_net.extras import require_extras

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ionn-catalog",
        description="Manage a catalog of models an edge server serves publicly: manifests "
        "and weight blobs on disk, validated as a client's upload would be.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="export a .keras model file you own into a catalog")
    add.add_argument("model", type=Path, help="the .keras file (loaded with safe mode on)")
    add.add_argument("dir", type=Path, help="catalog directory (created if missing)")
    add.add_argument("--name", default=None, help="name in the index (default: the model's)")
    add.add_argument(
        "--verbose", action="store_true", help="also show TensorFlow's native start-up logs"
    )
    for name, text in (
        ("list", "list the models of a catalog"),
        ("verify", "validate every manifest and blob; exit 1 if any is refused"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("dir", type=Path, help="catalog directory")
    return p


def _load_keras_file(path: Path, verbose: bool) -> Any:
    if path.suffix != ".keras" or not path.is_file():
        raise SystemExit(f"ionn-catalog: expected an existing .keras file, got {str(path)!r}")
    from ionn_net.tflog import import_tensorflow

    import_tensorflow(verbose=verbose)
    import keras

    # The operator's own file: safe mode still refuses code-carrying layers.
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def _add(args: argparse.Namespace, out: TextIO) -> int:
    from ionn_net.catalog import add_manifest
    from ionn_net.errors import SpecError
    from ionn_net.model.layers import extract_manifest

    model = _load_keras_file(args.model, args.verbose)
    try:
        manifest, blobs, local_only = extract_manifest(model)
    except SpecError as exc:
        raise SystemExit(f"ionn-catalog: {args.model}: cannot be described: {exc}") from None
    digest, written = add_manifest(
        args.dir, manifest, blobs, name=args.name, source=args.model.name
    )
    total = sum(len(b) for b in blobs.values())
    out.write(
        f"added {args.name or manifest.name} {digest}: {len(manifest.layers)} layers, "
        f"{len(blobs)} blobs, {total / 1e6:.1f} MB ({written / 1e6:.1f} MB written)\n"
    )
    for name, reason in sorted(local_only.items()):
        out.write(f"  kept local (never served): {name}: {reason}\n")
    return 0


def _list(args: argparse.Namespace, out: TextIO) -> int:
    from ionn_net.catalog import Catalog

    catalog = Catalog.open(args.dir)
    out.write(f"{'digest':<14} {'name':<24} {'layers':>6} {'blobs':>5} {'MB':>8}  state\n")
    for model in sorted(catalog.models.values(), key=lambda m: m.name):
        state = "complete" if model.complete else "incomplete (refused blobs)"
        out.write(
            f"{model.digest[:12]:<14} {model.name[:24]:<24} {len(model.manifest.layers):>6} "
            f"{len(model.blob_digests):>5} {model.blob_bytes / 1e6:>8.1f}  {state}\n"
        )
    for refusal in catalog.refused:
        out.write(f"refused: {refusal}\n")
    return 0


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    from ionn_net.catalog import Catalog

    catalog = Catalog.open(args.dir)
    for refusal in catalog.refused:
        out.write(f"refused: {refusal}\n")
    for path in catalog.unlisted:
        out.write(f"not in the index (not served): {path}\n")
    held = catalog.blob_digests()
    nbytes = sum(catalog.blob_size(d) for d in held)
    verdict = "ok" if not catalog.refused else f"{len(catalog.refused)} refused"
    out.write(
        f"{verdict}: {len(catalog.models)} models, {len(held)} blobs, "
        f"{nbytes / 1e6:.1f} MB verified\n"
    )
    return 1 if catalog.refused else 0


def main(argv: list[str] | None = None) -> int:
    require_extras("ionn-catalog")
    args = _parser().parse_args(argv)
    from ionn_net.catalog import CatalogError

    commands = {"add": _add, "list": _list, "verify": _verify}
    try:
        return commands[args.command](args, sys.stdout)
    except CatalogError as exc:
        sys.stderr.write(f"ionn-catalog: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
