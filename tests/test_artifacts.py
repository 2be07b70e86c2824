"""The ONNX models as DVC artifacts: another project gets them by name, through git and a DVC remote.

End to end on the synthetic pipeline: a tiny project is reproduced, pushed to a local folder remote and a local
bare git repository, its models are released by GTO version tags (`gru-onnx@v1.0.0`), and an empty folder gets
them with `dvc artifacts get` and `dvc.api`, then classifies with onnxruntime. The failures are DVC's own
messages; docs/artifacts.md explains them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, commit, copy_project, dvc, run, synthetic_images, write_params
from fmnist_seq.runtime import metadata, open_session, run as run_model

ARTIFACTS = {"lstm-onnx": "models/onnx/lstm.onnx", "lstm-int8-onnx": "models/onnx/lstm.int8.onnx",
             "gru-onnx": "models/onnx/gru.onnx", "rnn-onnx": "models/onnx/rnn.onnx",
             "rnn-int8-onnx": "models/onnx/rnn.int8.onnx"}


def test_dvc_yaml_declares_the_exported_files_as_models():
    """Quick, no DVC run: each artifact is a model file that the export stage writes."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    artifacts = spec["artifacts"]
    assert {name: a["path"] for name, a in artifacts.items()} == ARTIFACTS
    export_outs = [next(iter(o)) if isinstance(o, dict) else o for o in spec["stages"]["export"]["outs"]]
    for name, artifact in artifacts.items():
        assert artifact["type"] == "model" and artifact["desc"] and "onnx" in artifact["labels"], name
        assert any(artifact["path"].startswith(out.rstrip("/") + "/") for out in export_outs), name


@pytest.fixture(scope="module")
def published(tmp_path_factory, reproduced_once):
    """A reproduced project pushed to a folder remote and a bare git repository, with two tagged versions.

    v1.0.0 of every artifact is the first export; v1.1.0 of gru-onnx is the GRU retrained with another lr one
    commit later (a re-export alone would give the same bytes: the file records its checkpoint, not the commit).
    """
    root = tmp_path_factory.mktemp("artifacts")
    project = copy_project(reproduced_once[0], root / "project")
    storage = root / "dvc-storage"
    dvc("remote", "add", "-d", "storage", str(storage), cwd=project)
    commit(project, "baseline")
    dvc("push", cwd=project)
    versions = {"v1.0.0": {name: (project / path).read_bytes() for name, path in ARTIFACTS.items()}}
    for name in ARTIFACTS:
        run(["git", "tag", "-a", f"{name}@v1.0.0", "-m", f"Release {name} v1.0.0"], cwd=project)

    write_params(project, {"train_gru": {"lr": 0.02}})
    dvc("repro", cwd=project)
    commit(project, "GRU at lr 0.02")
    dvc("push", cwd=project)
    versions["v1.1.0"] = {"gru-onnx": (project / ARTIFACTS["gru-onnx"]).read_bytes()}
    run(["git", "tag", "-a", "gru-onnx@v1.1.0", "-m", "Release gru-onnx v1.1.0"], cwd=project)

    bare = root / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], cwd=root)
    run(["git", "remote", "add", "origin", str(bare)], cwd=project)
    run(["git", "push", "-q", "origin", "main", "--tags"], cwd=project)
    return {"root": root, "project": project, "bare": bare, "storage": storage, "versions": versions}


def consumer(published, name: str) -> Path:
    """An empty folder outside any git or DVC project, as another project's workspace."""
    folder = published["root"] / name
    folder.mkdir()
    return folder


def classify(model: str | Path | bytes) -> tuple[list[str], np.ndarray]:
    """Class names from the file's metadata, and its probabilities for a few synthetic test images."""
    session = open_session(model, ["CPUExecutionProvider"])
    images = synthetic_images(np.arange(10), seed=9)
    _, probabilities = run_model(session, images)
    return metadata(session)["class_names"], probabilities


@pytest.mark.e2e
def test_artifacts_get_latest_version_and_classify(published):
    here = consumer(published, "latest")
    result = dvc("artifacts", "get", str(published["bare"]), "gru-onnx", cwd=here)
    assert "Downloaded 1 file(s) to 'gru.onnx'" in result.stdout
    assert (here / "gru.onnx").read_bytes() == published["versions"]["v1.1.0"]["gru-onnx"]
    names, probabilities = classify(here / "gru.onnx")
    assert names[0] == "T-shirt/top" and probabilities.shape == (10, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    # the same answers as the file in the publishing project
    np.testing.assert_array_equal(probabilities, classify(published["project"] / ARTIFACTS["gru-onnx"])[1])


@pytest.mark.e2e
def test_artifacts_get_by_version_tag(published):
    here = consumer(published, "by-version")
    dvc("artifacts", "get", str(published["bare"]), "gru-onnx", "--rev", "v1.0.0", "-o", "gru-v1.0.0.onnx", cwd=here)
    old = (here / "gru-v1.0.0.onnx").read_bytes()
    assert old == published["versions"]["v1.0.0"]["gru-onnx"] != published["versions"]["v1.1.0"]["gru-onnx"]
    for name in ("rnn-onnx", "rnn-int8-onnx"):  # only v1.0.0 exists: it is also the latest
        dvc("artifacts", "get", str(published["bare"]), name, cwd=here)
        path = here / Path(ARTIFACTS[name]).name
        assert path.read_bytes() == published["versions"]["v1.0.0"][name]
        assert classify(path)[1].shape == (10, 10)


@pytest.mark.e2e
def test_python_api_artifacts_show_and_open(published):
    import dvc.api as dvc_api  # as: `dvc` is the command helper here

    repo = str(published["bare"])
    tags = {v: run(["git", "rev-list", "-n", "1", f"gru-onnx@{v}"], cwd=published["project"]).stdout.strip()
            for v in ("v1.0.0", "v1.1.0")}
    latest = dvc_api.artifacts_show("gru-onnx", repo=repo)
    assert latest == {"rev": tags["v1.1.0"], "path": "models/onnx/gru.onnx"}
    first = dvc_api.artifacts_show("gru-onnx", version="v1.0.0", repo=repo)
    assert first["rev"] == tags["v1.0.0"]
    with dvc_api.open(first["path"], repo=repo, rev=first["rev"], mode="rb") as f:
        model = f.read()
    assert model == published["versions"]["v1.0.0"]["gru-onnx"]
    assert classify(model)[0][9] == "Ankle boot"


@pytest.mark.e2e
def test_unknown_artifact_or_version_is_dvcs_not_found_error(published):
    import dvc.api as dvc_api
    from dvc.exceptions import ArtifactNotFoundError

    here = consumer(published, "unknown")
    missing = dvc("artifacts", "get", str(published["bare"]), "no-such-model", cwd=here, check=False)
    assert missing.returncode == 1
    # DVC's words: "failed to get 'NAME' from 'URL' - Failed to download artifact 'NAME' via DVC remote:
    # Unable to find artifact 'NAME'" (after a line saying Studio was not configured, which is not the cause)
    assert f"failed to get 'no-such-model' from '{published['bare']}'" in missing.stderr
    assert "Unable to find artifact 'no-such-model'" in missing.stderr
    wrong_version = dvc("artifacts", "get", str(published["bare"]), "gru-onnx", "--rev", "v9.9.9", cwd=here,
                        check=False)
    assert wrong_version.returncode == 1 and "Unable to find artifact 'gru-onnx @ v9.9.9'" in wrong_version.stderr
    assert list(here.iterdir()) == []
    with pytest.raises(ArtifactNotFoundError, match="Unable to find artifact 'no-such-model'"):
        dvc_api.artifacts_show("no-such-model", repo=str(published["bare"]))


def _release_with_remote(published, name: str, change: list[str]) -> Path:
    """A bare repository whose tagged commit has its DVC remote changed by `dvc remote <change>`."""
    root = published["root"]
    work = root / f"{name}-work"
    run(["git", "clone", "-q", str(published["bare"]), str(work)], cwd=root)
    run(["git", "config", "user.email", "test@example.com"], cwd=work)
    run(["git", "config", "user.name", "test"], cwd=work)
    dvc("remote", *change, cwd=work)
    commit(work, f"remote: {' '.join(change)}")
    run(["git", "tag", "-a", "gru-onnx@v2.0.0", "-m", "Release with a broken remote"], cwd=work)
    bare = root / f"{name}.git"
    run(["git", "clone", "-q", "--bare", str(work), str(bare)], cwd=root)
    return bare


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["unreachable", "none"])
def test_missing_or_unreachable_remote_fails_clearly(published, case):
    gone = published["root"] / "moved-away"
    change = ["modify", "storage", "url", str(gone)] if case == "unreachable" else ["remove", "storage"]
    bare = _release_with_remote(published, f"remote-{case}", change)
    here = consumer(published, f"get-{case}")
    failed = dvc("artifacts", "get", str(bare), "gru-onnx", cwd=here, check=False)
    assert failed.returncode == 1
    assert "Failed to download artifact 'gru-onnx' via DVC remote" in failed.stderr
    assert "No such file or directory" in failed.stderr
    if case == "unreachable":  # the message names the remote it tried
        assert str(gone) in failed.stderr
    else:  # no remote at all: DVC names only its temporary cache (documented)
        assert "dvc-cache" in failed.stderr
    assert not (here / "gru.onnx").exists()
    # dvc.api: the remote that is gone is named in the cause; no remote at all reads as a missing file
    import dvc.api as dvc_api
    from dvc.exceptions import PathMissingError
    from dvc_data.index.index import DataIndexDirError

    artifact = dvc_api.artifacts_show("gru-onnx", repo=str(bare))
    expected = (DataIndexDirError, r"failed to load directory \('models', 'onnx'\)") if case == "unreachable" else \
        (PathMissingError, "does not exist in the target repository")
    with pytest.raises(expected[0], match=expected[1]) as raised:
        with dvc_api.open(artifact["path"], repo=str(bare), rev=artifact["rev"], mode="rb") as f:
            f.read()
    if case == "unreachable":
        assert str(gone) in str(raised.value.__cause__)
    # the fix on the consumer's side: say where the storage is
    dvc("artifacts", "get", str(bare), "gru-onnx", "--remote", "storage",
        "--remote-config", f"url={published['storage']}", cwd=here)
    assert (here / "gru.onnx").read_bytes() == published["versions"]["v1.1.0"]["gru-onnx"]
    with dvc_api.open(artifact["path"], repo=str(bare), rev=artifact["rev"], mode="rb", remote="storage",
                      remote_config={"url": str(published["storage"])}) as f:
        assert f.read() == published["versions"]["v1.1.0"]["gru-onnx"]
