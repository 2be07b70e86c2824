"""End to end: the whole DVC DAG on a tiny synthetic dataset served from a local HTTP mirror."""

import csv
import json
from collections import Counter

import onnxruntime as ort

from conftest import NAMES, commit, dvc, write_params
from fmnist_seq.classes import CLASS_KEYS, CLASS_NAMES

STAGES = ("download", "prepare", "train_rnn", "train_gru", "evaluate", "export")


def ran(result) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in result.stdout}


def test_full_pipeline_reruns_only_what_changed(project):
    first = dvc("repro", cwd=project)
    assert ran(first) == set(STAGES)
    for name in NAMES.values():
        assert (project / "data/raw" / name).is_file()
    for path in ("data/prepared/train.pt", "models/rnn.pt", "models/gru.pt", "models/onnx/gru.onnx",
                 "models/onnx/rnn.onnx", "results/data/examples.png", "results/train/gru/plots/images/learning_curve.png",
                 "results/evaluate/confusion_gru.png", "results/evaluate/per_class_accuracy.png",
                 "results/evaluate/misclassified_rnn.png", "results/evaluate/summary.md"):
        assert (project / path).is_file(), path

    metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
    per_class = json.loads((project / "results/evaluate/per_class.json").read_text())
    for model in ("rnn", "gru"):
        test = metrics[model]["test"]
        assert 0 <= test["accuracy"] <= 1 and test["loss"] > 0 and 0 <= test["macro_f1"] <= 1
        assert 1 <= metrics[model]["selected_epoch"] <= 3
        assert 0 <= metrics[model]["valid"]["accuracy"] <= 1
        with open(project / f"results/evaluate/{model}_predictions.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 100  # the confusion matrix sums to the test size
        pairs = Counter((r["actual"], r["predicted"]) for r in rows)
        assert sum(pairs[(n, n)] for n in CLASS_NAMES) / 100 == test["accuracy"]
        for name, key in zip(CLASS_NAMES, CLASS_KEYS):
            actual = sum(v for (a, _), v in pairs.items() if a == name)
            assert per_class[model][key]["recall"] == pairs[(name, name)] / actual
    data_metrics = json.loads((project / "results/data/metrics.json").read_text())
    assert (data_metrics["train"]["count"], data_metrics["valid"]["count"], data_metrics["test"]["count"]) == (270, 30, 100)
    train_metrics = json.loads((project / "results/train/rnn/metrics.json").read_text())
    assert train_metrics["step"] == 3 and "selected" in train_metrics
    assert ort.InferenceSession(str(project / "models/onnx/gru.onnx")).get_modelmeta().custom_metadata_map["class_names"]

    second = dvc("repro", cwd=project)
    assert ran(second) == set() and "up to date" in second.stdout

    shown = dvc("metrics", "show", "--json", cwd=project)
    assert "gru" in shown.stdout and "accuracy" in shown.stdout
    dvc("plots", "show", "--json", cwd=project)
    commit(project, "baseline")  # what `dvc metrics diff` compares against

    # Changing one model's parameter reruns that model's training, never the other's.
    write_params(project, {"train_gru": {"lr": 0.02}})
    status = dvc("status", "--json", cwd=project)
    changed = set(json.loads(status.stdout))
    assert "train_gru" in changed and "train_rnn" not in changed
    third = dvc("repro", cwd=project)
    assert "train_gru" in ran(third) and "train_rnn" not in ran(third)
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout)
    # (export timings are remeasured whenever export reruns, so results/export is left out here)
    assert "results/train/rnn/metrics.json" not in diff and "results/train/gru/metrics.json" in diff
    evaluated = diff["results/evaluate/metrics.json"]
    assert any(k.startswith("gru.test") for k in evaluated)
    assert not any(k.startswith("rnn.") for k in evaluated), evaluated

    # A value that cannot train stops before any work, with the key in the message.
    write_params(project, {"train_gru": {"model": {"hidden_size": 0}}})
    failed = dvc("repro", "train_gru", cwd=project, check=False)
    assert failed.returncode != 0
    assert "train_gru.model.hidden_size = 0 is out of range: must be >= 1" in failed.stderr + failed.stdout
    assert not (project / "models/gru.pt").exists()


def test_corrupted_mirror_file_gives_clear_error_and_no_output(project, http_mirror):
    _, folder, _ = http_mirror
    target = folder / f"{NAMES['test_images']}.gz"
    target.write_bytes(target.read_bytes()[:200])
    result = dvc("repro", "download", cwd=project, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "could not get a valid t10k-images-idx3-ubyte from any source" in output
    assert "not a complete gzip file" in output and "dataset-fashion-mnist" in output
    assert "Traceback" not in output
    assert not (project / "data/raw").exists()
