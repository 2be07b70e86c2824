"""End to end: the whole DVC DAG on a tiny synthetic dataset served from a local HTTP mirror."""

import csv
import json
import re
from collections import Counter

import onnxruntime as ort
import pytest

from conftest import commit, copy_project, dvc, write_params
from fmnist_seq.classes import CLASS_KEYS, CLASS_NAMES
from fmnist_seq.data import RAW_FILES

pytestmark = pytest.mark.e2e

STAGES = ("download", "prepare", "train_rnn", "train_gru", "train_teacher", "teacher_logits", "train_lstm",
          "calibrate", "evaluate", "export")
MODELS = ("rnn", "gru", "lstm")
# Words that name a measurement of the machine: none may appear in a declared metric.
TIMING = re.compile(r"seconds|_s$|per_s|latency|gflops|speedup|threads|elapsed")


def flat_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]
    return keys


def ran(result) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in result.stdout}


def test_full_pipeline_reruns_only_what_changed(reproduced_once, tmp_path):
    template, first = reproduced_once  # the first `dvc repro` of a fresh project, shared with other modules
    project = copy_project(template, tmp_path / "project")
    assert ran(first) == set(STAGES)
    for name in RAW_FILES.values():
        assert (project / "data/raw" / name).is_file()
    for path in ("data/prepared/train.pt", "models/rnn.pt", "models/gru.pt", "models/teacher.pt",
                 "models/teacher_logits.pt", "results/teacher_logits/timings.json", "models/lstm.pt",
                 "models/onnx/gru.onnx", "models/onnx/rnn.onnx", "models/onnx/lstm.onnx", "models/onnx/samples.json",
                 "results/data/examples.png", "results/train/lstm/plots/images/learning_curve.png",
                 "results/train/gru/plots/images/learning_curve.png",
                 "results/evaluate/confusion_gru.png", "results/evaluate/per_class_accuracy.png",
                 "results/evaluate/misclassified_rnn.png", "results/evaluate/summary.md",
                 "results/evaluate/calibration/reliability_lstm.png", "results/evaluate/calibration/risk_coverage.png",
                 "results/evaluate/calibration/reliability_gru_uncalibrated.csv",
                 "results/evaluate/calibration/risk_coverage_rnn.csv"):
        assert (project / path).is_file(), path
    # Timings live in their own files, beside the metrics; the GRU trained with two workers, the RNN with one.
    gru_timings = json.loads((project / "results/train/gru/timings.json").read_text())
    rnn_timings = json.loads((project / "results/train/rnn/timings.json").read_text())
    assert (gru_timings["workers"], rnn_timings["workers"]) == (2, 1) and gru_timings["train_seconds"] > 0
    export_timings = json.loads((project / "results/export/timings.json").read_text())
    assert export_timings["gru"]["onnxruntime_cpu_images_per_s"] > 0 and export_timings["matmul_gflops_torch"] > 0

    metrics = json.loads((project / "results/evaluate/metrics.json").read_text())
    per_class = json.loads((project / "results/evaluate/per_class.json").read_text())
    assert set(metrics) == {*MODELS, "comparisons"}  # the teacher only teaches: never evaluated or exported
    assert len(metrics["comparisons"]) == 3  # each pair once, the more accurate first: "lstm_vs_gru"
    assert all(0 < c["p_value"] <= 1 for c in metrics["comparisons"].values())
    # The calibrate stage fitted a temperature per model on the validation split; evaluate and export used it.
    calibrated = json.loads((project / "results/calibrate/metrics.json").read_text())
    exported = json.loads((project / "results/export/metrics.json").read_text())
    thresholds = json.loads((project / "results/evaluate/thresholds.json").read_text())
    for model in MODELS:
        t = calibrated[model]["temperature"]
        assert 0.05 < t < 20 and metrics[model]["temperature"] == t == exported[model]["temperature"]
        meta = ort.InferenceSession(str(project / f"models/onnx/{model}.onnx")).get_modelmeta().custom_metadata_map
        assert json.loads(meta["temperature"]) == t
        assert calibrated[model]["valid_nll_calibrated"] <= calibrated[model]["valid_nll"]
        assert metrics[model]["test_accuracy_low"] <= metrics[model]["test_accuracy"] <= metrics[model]["test_accuracy_high"]
        for key in ("ece", "nll", "brier"):
            assert 0 <= metrics[model][f"test_{key}"] and 0 <= metrics[model][f"test_{key}_calibrated"]
        assert set(thresholds[model]) == {"0.95", "0.98", "0.99"}
        assert {"threshold", "valid_coverage", "test_coverage", "test_accuracy"} <= set(thresholds[model]["0.95"])
    assert "distilling from a cnn teacher" in first.stdout
    for model in MODELS:
        m = metrics[model]
        assert list(m)[:3] == ["test_accuracy", "test_loss", "selected_epoch"]  # what `dvc exp show` lists first
        assert 0 <= m["test_accuracy"] <= 1 and m["test_loss"] > 0 and 0 <= m["test_macro_f1"] <= 1
        assert 1 <= m["selected_epoch"] <= 3 and 0 <= m["valid_accuracy"] <= 1 and m["parameters"] > 0
        with open(project / f"results/evaluate/{model}_predictions.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 100  # the confusion matrix sums to the test size
        pairs = Counter((r["actual"], r["predicted"]) for r in rows)
        assert sum(pairs[(n, n)] for n in CLASS_NAMES) / 100 == m["test_accuracy"]
        for name, key in zip(CLASS_NAMES, CLASS_KEYS):
            actual = sum(v for (a, _), v in pairs.items() if a == name)
            assert per_class[model][key]["recall"] == pairs[(name, name)] / actual
    data_metrics = json.loads((project / "results/data/metrics.json").read_text())
    assert (data_metrics["train_images"], data_metrics["valid_images"], data_metrics["test_images"]) == (270, 30, 100)
    train_metrics = json.loads((project / "results/train/rnn/metrics.json").read_text())
    assert train_metrics["step"] == 3 and "selected" in train_metrics
    assert ort.InferenceSession(str(project / "models/onnx/gru.onnx")).get_modelmeta().custom_metadata_map["class_names"]

    second = dvc("repro", cwd=project)
    assert ran(second) == set() and "up to date" in second.stdout

    shown = json.loads(dvc("metrics", "show", "--json", cwd=project).stdout)
    declared = {path: data["data"] for path, data in shown[""]["data"].items()}
    assert set(declared) == {"results/data/metrics.json", "results/calibrate/metrics.json",
                             "results/evaluate/metrics.json", "results/export/metrics.json"}
    keys = [f"{path}:{key}" for path, data in declared.items() for key in flat_keys(data)]
    assert "results/evaluate/metrics.json:gru.test_accuracy" in keys
    assert not [key for key in keys if TIMING.search(key)], "declared metrics hold results only, no timings"

    plots = json.loads(dvc("plots", "show", "--json", cwd=project).stdout)["data"]
    loss = json.dumps(plots["Loss"])  # both models' train and valid curves, one point per epoch
    for series in ("rnn/plots/metrics/train/loss.tsv", "gru/plots/metrics/valid/loss.tsv"):
        assert series in loss
    assert '"step": "3"' in loss or '"step": 3' in loss
    confusion = json.dumps(plots["results/evaluate/gru_predictions.csv"])
    assert "Ankle boot" in confusion and "confusion" in confusion.lower()
    assert "results/train/gru/plots/images/learning_curve.png" in plots
    # The calibration plots, drawn by DVC's own templates from the evaluate stage's data files, and its PNGs.
    for title, series in (("Reliability LSTM", "reliability_lstm_uncalibrated.csv"),
                          ("Risk-coverage", "risk_coverage_gru.csv"), ("Images per confidence bin", "reliability_rnn.csv")):
        assert f'"filename": "{series}"' in json.dumps(plots[title]), title
    assert "results/evaluate/calibration/reliability_gru.png" in plots
    commit(project, "baseline")  # what `dvc metrics diff` compares against

    # Same params, same seed, same machine: a forced rerun of every stage changes no metric at all.
    forced = dvc("repro", "-f", cwd=project)
    assert ran(forced) == set(STAGES)
    assert dvc("metrics", "diff", cwd=project).stdout.strip() == ""
    assert json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout) == {}
    commit(project, "forced rerun")

    # Other target accuracies change the thresholds only: the temperatures, so the exported files, stay.
    write_params(project, {"calibrate": {"target_accuracies": [0.9]}})
    assert ran(dvc("repro", cwd=project)) == {"calibrate", "evaluate"}
    assert set(json.loads((project / "results/evaluate/thresholds.json").read_text())["gru"]) == {"0.9"}
    # Calibration off: temperature 1, and the exported files change with it.
    write_params(project, {"calibrate": {"fit": False}})
    assert ran(dvc("repro", cwd=project)) == {"calibrate", "evaluate", "export"}
    assert json.loads((project / "results/export/metrics.json").read_text())["gru"]["temperature"] == 1.0
    commit(project, "calibration params")

    # Changing one model's parameter reruns that model's training, never the others'.
    write_params(project, {"train_gru": {"lr": 0.02}})
    status = dvc("status", "--json", cwd=project)
    changed = set(json.loads(status.stdout))
    assert "train_gru" in changed and not {"train_rnn", "train_teacher", "teacher_logits", "train_lstm"} & changed
    third = dvc("repro", cwd=project)
    assert ran(third) == {"train_gru", "calibrate", "evaluate", "export"}
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout)
    evaluated = diff["results/evaluate/metrics.json"]
    assert "gru.test_accuracy" in evaluated or "gru.test_loss" in evaluated
    assert not any(k.startswith(("rnn.", "lstm.")) for k in evaluated), evaluated
    assert not any(k.startswith(("rnn.", "lstm.")) for k in diff.get("results/export/metrics.json", {}))
    commit(project, "gru lr")

    # The student's temperature softens the cached logits: train_lstm reruns, the teacher's pass does not.
    write_params(project, {"train_lstm": {"distill": {"temperature": 2.0}}})
    assert set(json.loads(dvc("status", "--json", cwd=project).stdout)) == {"train_lstm"}
    write_params(project, {"train_lstm": {"distill": {"temperature": 4.0}}})

    # The new model's block: its own training and the two stages that read every model, nothing else.
    write_params(project, {"train_lstm": {"distill": {"alpha": 0.3}}})
    fourth = dvc("repro", cwd=project)
    assert ran(fourth) == {"train_lstm", "calibrate", "evaluate", "export"}
    evaluated = json.loads(dvc("metrics", "diff", "--json", cwd=project).stdout)["results/evaluate/metrics.json"]
    assert not any(k.startswith(("rnn.", "gru.")) for k in evaluated), evaluated

    # A value that cannot train stops before any work, with the key in the message.
    write_params(project, {"train_gru": {"model": {"hidden_size": 0}}})
    failed = dvc("repro", "train_gru", cwd=project, check=False)
    assert failed.returncode != 0
    assert "train_gru.model.hidden_size = 0 is out of range: must be >= 1" in failed.stderr + failed.stdout
    assert not (project / "models/gru.pt").exists()


def test_corrupted_mirror_file_gives_clear_error_and_no_output(project, http_mirror):
    _, folder, _ = http_mirror
    target = folder / f"{RAW_FILES['test_images']}.gz"
    target.write_bytes(target.read_bytes()[:200])
    result = dvc("repro", "download", cwd=project, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "could not get a valid t10k-images-idx3-ubyte from any source" in output
    assert "not a complete gzip file" in output and "dataset-fashion-mnist" in output
    assert "Traceback" not in output
    assert not (project / "data/raw").exists()
