"""The model catalog: export a real (small) Keras model, open it as a server would, match
client manifests against it by blob digest, and refuse bad entries naming the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.helpers.manifests import ManifestBuilder
from tests.helpers.small_models import BACKBONE, export, model_pair

from ionn_net import catalog_cli
from ionn_net.catalog import Catalog, CatalogError, build_catalog_model
from ionn_net.model.spec import canonical_json


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    return model_pair()


def blob_of(root: Path, model: Any, layer: str) -> Path:
    from ionn_net.model.layers import extract_manifest

    manifest, _, _ = extract_manifest(model)
    digest = manifest.layer(layer).blob_sha256
    assert digest is not None
    return root / "blobs" / digest


def test_an_exported_model_opens_and_its_backbone_matches_a_fine_tuned_head(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    from ionn_net.model.layers import extract_manifest

    base, tuned = models
    digest = export(base, tmp_path, name="small-base")
    catalog = Catalog.open(tmp_path)
    assert catalog.refused == ()
    model = catalog.models[digest]
    assert model.complete and model.name == "small-base"
    assert model.manifest.manifest_digest() == digest
    client, blobs, _ = extract_manifest(tuned)
    match = catalog.match(client)
    assert match.layers == BACKBONE  # the head's weights differ: not held
    head = client.layer("head").blob_sha256
    assert head not in match.blobs and not catalog.has_blob(str(head))
    assert match.nbytes == sum(len(blobs[str(client.layer(n).blob_sha256)]) for n in BACKBONE)
    same, _, _ = extract_manifest(base)
    assert catalog.match(same).layers == (*BACKBONE, "head")


def test_a_digest_claimed_with_another_size_does_not_match(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    import dataclasses

    from ionn_net.model.layers import extract_manifest

    base, _ = models
    export(base, tmp_path)
    client, _, _ = extract_manifest(base)
    layers = tuple(
        dataclasses.replace(s, blob_size=s.blob_size + 4) if s.name == "conv2" else s
        for s in client.layers
    )
    odd = dataclasses.replace(client, layers=layers)
    assert Catalog.open(tmp_path).match(odd).layers == ("conv1", "bn1", "head")


def test_catalog_layers_build_and_compute_what_keras_computes(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    base, _ = models
    digest = export(base, tmp_path)
    warm = build_catalog_model(Catalog.open(tmp_path), digest)
    assert warm.compiled and warm.build_s > 0 and warm.compile_s > 0
    x = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
    got = warm.executor.predict(x)
    np.testing.assert_allclose(got, base(x, training=False).numpy(), rtol=1e-4, atol=1e-5)


def test_a_blob_whose_bytes_do_not_match_its_name_is_refused_naming_it(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    base, _ = models
    digest = export(base, tmp_path)
    bad = blob_of(tmp_path, base, "conv2")
    data = bytearray(bad.read_bytes())
    data[10] ^= 1
    bad.write_bytes(bytes(data))
    catalog = Catalog.open(tmp_path)
    [refusal] = catalog.refused
    assert refusal.path == bad
    assert "hash to" in refusal.reason and "not to the digest in its name" in refusal.reason
    assert not catalog.has_blob(bad.name)
    model = catalog.models[digest]
    assert not model.complete  # still served: its other blobs stay public
    assert catalog.has_blob(blob_of(tmp_path, base, "conv1").name)
    with pytest.raises(CatalogError, match=str(bad)):
        Catalog.open(tmp_path, strict=True)


def test_a_truncated_blob_is_refused_naming_it(models: tuple[Any, Any], tmp_path: Path) -> None:
    base, _ = models
    export(base, tmp_path)
    bad = blob_of(tmp_path, base, "head")
    size = bad.stat().st_size
    bad.write_bytes(bad.read_bytes()[:-4])
    [refusal] = Catalog.open(tmp_path).refused
    assert refusal.path == bad
    assert f"holds {size - 4} bytes, its manifest declares {size}" in refusal.reason


def _list_in_index(root: Path, body: bytes) -> Path:
    digest = hashlib.sha256(body).hexdigest()
    path = root / "manifests" / f"{digest}.json"
    path.write_bytes(body)
    index = json.loads((root / "index.json").read_text())
    index["models"].append({"digest": digest, "name": "evil", "source": "", "added": ""})
    (root / "index.json").write_text(json.dumps(index))
    return path


@pytest.mark.parametrize(
    ("config", "reason"),
    [({}, "class 'Lambda' is not in the allowlist"), ({"function": "print"}, "'function'")],
)
def test_a_manifest_outside_the_allowlist_is_refused_naming_it(
    models: tuple[Any, Any], tmp_path: Path, config: dict[str, str], reason: str
) -> None:
    base, _ = models
    good = export(base, tmp_path)
    b = ManifestBuilder(name="evil")
    x = b.input("x", [4])
    out = b.add("code", "Lambda", config, [x])
    path = _list_in_index(tmp_path, canonical_json(b.obj([out])))
    catalog = Catalog.open(tmp_path)
    [refusal] = catalog.refused
    assert refusal.path == path
    assert reason in refusal.reason
    assert set(catalog.models) == {good}  # the server starts with the rest


def test_a_manifest_not_matching_its_name_or_not_canonical_is_refused(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    base, _ = models
    digest = export(base, tmp_path)
    path = tmp_path / "manifests" / f"{digest}.json"
    body = path.read_bytes()
    path.write_bytes(body.replace(b'"name":"small"', b'"name":"other"'))
    [refusal] = Catalog.open(tmp_path).refused
    assert refusal.path == path and "not to the digest in its name" in refusal.reason
    spaced = json.dumps(json.loads(body), indent=1).encode()  # valid JSON, not canonical
    path = _list_in_index(tmp_path, spaced)
    assert any(r.path == path and "canonical" in r.reason for r in Catalog.open(tmp_path).refused)


def test_a_directory_without_an_index_is_not_a_catalog(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"index\.json .*not a catalog"):
        Catalog.open(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(CatalogError, match="expected format 'ionn-catalog/1'"):
        Catalog.open(tmp_path)


def test_files_no_index_entry_names_are_not_served(models: tuple[Any, Any], tmp_path: Path) -> None:
    base, tuned = models
    export(base, tmp_path)
    index = (tmp_path / "index.json").read_bytes()
    tuned_digest = export(tuned, tmp_path)
    (tmp_path / "index.json").write_bytes(index)  # as if the add stopped before its commit
    catalog = Catalog.open(tmp_path)
    assert tuned_digest not in catalog.models
    head = blob_of(tmp_path, tuned, "head")
    assert not catalog.has_blob(head.name)
    assert {tmp_path / "manifests" / f"{tuned_digest}.json", head} <= set(catalog.unlisted)


def test_a_blob_corrupted_after_opening_is_refused_on_read_and_kept_on_disk(
    models: tuple[Any, Any], tmp_path: Path
) -> None:
    base, _ = models
    export(base, tmp_path)
    catalog = Catalog.open(tmp_path)
    path = blob_of(tmp_path, base, "conv1")
    assert catalog.blob(path.name) == path.read_bytes()
    path.write_bytes(b"\0" * path.stat().st_size)
    with pytest.raises(CatalogError, match="no longer served"):
        catalog.blob(path.name)
    assert not catalog.has_blob(path.name)
    assert path.exists()  # the operator's file: refused, never deleted


def test_the_cli_adds_lists_and_verifies(
    models: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = models
    model_file = tmp_path / "base.keras"
    base.save(model_file)
    root = tmp_path / "catalog"
    assert catalog_cli.main(["add", str(model_file), str(root), "--name", "base"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added base ") and "7 layers, 4 blobs" in out
    assert catalog_cli.main(["list", str(root)]) == 0
    assert " base " in capsys.readouterr().out
    assert catalog_cli.main(["verify", str(root)]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 models, 4 blobs")
    bad = blob_of(root, base, "bn1")
    bad.write_bytes(bad.read_bytes()[:-1])
    assert catalog_cli.main(["verify", str(root)]) == 1
    assert f"refused: {bad}: holds" in capsys.readouterr().out
    assert catalog_cli.main(["verify", str(tmp_path / "nothing")]) == 2
    assert "not a catalog" in capsys.readouterr().err
