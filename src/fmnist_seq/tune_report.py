"""What a study found: the table of its best trials, what pruning saved, Optuna's pictures, and the
`dvc exp run` commands that retrain a trial through the pipeline as an ordinary DVC experiment."""

from __future__ import annotations

import csv
import io
import os
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from fmnist_seq.atomic import write_text  # noqa: E402
from fmnist_seq.study import ATTR_EPOCHS, ATTR_MODEL, ATTR_SETTINGS, StudyError  # noqa: E402


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first (ties: the earlier trial)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return sorted(done, key=lambda t: (-t.value, t.number))


@dataclass(frozen=True)
class Pruning:
    complete: int
    pruned: int
    failed: int
    running: int
    pruned_epochs: int  # epochs the pruned trials trained
    saved_epochs: float  # epochs they would have trained to the end
    saved_seconds: float  # those epochs at each pruned trial's own pace
    spent_seconds: float  # training time of every trial that reported

    def line(self, max_epochs: int) -> str:
        total = self.complete + self.pruned + self.failed + self.running
        share = self.pruned / total if total else 0.0
        saved = (f"; the pruned trials trained {self.pruned_epochs} of their {self.saved_epochs + self.pruned_epochs:.0f} "
                 f"epochs: pruning saved {self.saved_epochs:.0f} epochs, about {self.saved_seconds / 60:.0f} min at their "
                 f"pace ({self.saved_seconds / (self.spent_seconds + self.saved_seconds):.0%} of what the search would "
                 f"have trained without pruning)" if self.pruned and self.spent_seconds else "")
        return (f"{total} trials: {self.complete} finished, {self.pruned} pruned ({share:.0%}), {self.failed} failed"
                + (f", {self.running} running" if self.running else "") + saved)


def pruning(study: optuna.Study, max_epochs: int) -> Pruning:
    trials = study.get_trials(deepcopy=False)
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    pruned_epochs, saved_epochs, saved_seconds = 0, 0.0, 0.0
    for trial in trials:
        epochs, seconds = trial.user_attrs.get("epochs", 0), trial.user_attrs.get("seconds", 0.0)
        if trial.state == TrialState.PRUNED and epochs:
            pruned_epochs += epochs
            saved_epochs += max_epochs - epochs
            saved_seconds += (max_epochs - epochs) * seconds / epochs
    spent = sum(t.user_attrs.get("seconds", 0.0) for t in trials)
    return Pruning(count[TrialState.COMPLETE], count[TrialState.PRUNED], count[TrialState.FAIL],
                   count[TrialState.RUNNING], pruned_epochs, saved_epochs, saved_seconds, spent)


def yaml_value(value: Any) -> str:
    """A value as `dvc exp run -S` reads it back unchanged: floats by their shortest exact form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def experiment_name(study_name: str, trial: FrozenTrial) -> str:
    return f"{study_name}-trial-{trial.number}"


def settings_of(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """The keys the trial set itself (study.trial_settings), as it recorded them; for a trial of a study begun
    before they were recorded: its seed, the study's budget and one worker, what such trials trained with."""
    recorded = trial.user_attrs.get(ATTR_SETTINGS)
    if recorded is not None:
        return dict(recorded)
    return {"epochs": study.user_attrs[ATTR_EPOCHS], "seed": trial.user_attrs["seed"], "workers": 1}


def exp_args(study: optuna.Study, trial: FrozenTrial) -> list[str]:
    """The -S arguments that make the pipeline's training stage run exactly this trial: its sampled values and
    every setting it recorded (epochs, seed, workers, device), each set even where today's block agrees, since
    the block may change after the search."""
    block = f"train_{study.user_attrs[ATTR_MODEL]}"
    settings = {**trial.params, **settings_of(study, trial)}
    return [arg for key, value in settings.items() for arg in ("-S", f"{block}.{key}={yaml_value(value)}")]


def exp_command(study: optuna.Study, trial: FrozenTrial, queue: bool = False) -> list[str]:
    return ["dvc", "exp", "run", *(["--queue"] if queue else []), "-n", experiment_name(study.study_name, trial),
            *exp_args(study, trial)]


def shell(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


def table(study: optuna.Study, top: int) -> str:
    """The best `top` finished trials as a Markdown table."""
    best = finished(study)[:top]
    if not best:
        return "(no finished trial yet)"
    keys = list(dict.fromkeys(k for t in best for k in t.params))
    head = ["rank", "trial", "valid acc", "epoch", "seconds", *keys]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, t in enumerate(best, 1):
        cells = [str(rank), str(t.number), f"{t.value:.4f}",
                 f"{t.user_attrs.get('selected_epoch', '?')}/{t.user_attrs.get('epochs', '?')}",
                 f"{t.user_attrs.get('seconds', 0):.0f}",
                 *(_cell(t.params.get(k)) for k in keys)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_csv(study: optuna.Study) -> str:
    """Every trial, one row each: number, state, value, epochs trained, seconds, seed and its params."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "state", "valid_accuracy", "epochs", "selected_epoch", "seconds", "seed", *keys])
    for t in trials:
        writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else t.value,
                         t.user_attrs.get("epochs", 0), t.user_attrs.get("selected_epoch", ""),
                         t.user_attrs.get("seconds", ""), t.user_attrs.get("seed", ""),
                         *(t.params.get(k, "") for k in keys)])
    return out.getvalue()


# Optuna's matplotlib pictures: file name -> (function, what it shows)
PICTURES = {
    "optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
    "intermediate_values.png": optuna.visualization.matplotlib.plot_intermediate_values,  # pruned vs finished
    "timeline.png": optuna.visualization.matplotlib.plot_timeline,  # each trial's span, by state
}


LEGEND_TRIALS = 12  # past this, a legend of one entry per trial runs off the figure and hides nothing useful


def tidy(axes, name: str, trials: int) -> None:
    """The per-epoch picture names every trial in its legend: past a dozen it runs off the picture (a 35-trial
    study showed 24 of them), while the lines themselves say what matters, the short ones are pruned."""
    legend = axes.get_legend() if hasattr(axes, "get_legend") else None
    if name == "intermediate_values.png" and legend is not None and trials > LEGEND_TRIALS:
        legend.remove()
        axes.set_title(f"{axes.get_title()}: {trials} trials, the short lines pruned")


def write_pictures(study: optuna.Study, folder: Path) -> dict[str, str]:
    """Each picture that the study's trials allow (importances need two finished trials); returns the
    reason for each one skipped."""
    skipped = {}
    folder.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    for name, plot in PICTURES.items():
        with warnings.catch_warnings():
            # Optuna marks its matplotlib backend experimental on every call; tight_layout gives up on crowded
            # legends with a warning and draws them anyway
            warnings.simplefilter("ignore")
            # and its plots log that a study has no finished trial yet, which the report's own lines say
            optuna.logging.set_verbosity(optuna.logging.ERROR)
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:
                skipped[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                (folder / name).unlink(missing_ok=True)
                continue
            finally:
                optuna.logging.set_verbosity(verbosity)
            tidy(axes, name, len(study.trials))
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(9, 5.5)
            figure.tight_layout()
            figure.savefig(folder / name, dpi=110)
            plt.close(figure)
    return skipped


def write_results(study: optuna.Study, folder: Path, epochs: int, top: int,
                  no_retrain: str | None = None) -> dict[str, str]:
    """results/tune/<study>/: trials.csv, summary.md (table, pruning, commands) and the pictures; `no_retrain`
    says why no command retrains a trial exactly, when none does."""
    skipped = write_pictures(study, folder)
    best = finished(study)[:top]
    lines = [f"# Study {study.study_name}: train_{study.user_attrs[ATTR_MODEL]}", "",
             pruning(study, epochs).line(epochs), "", table(study, top), ""]
    if best and no_retrain:
        lines += [f"No `dvc exp run` retrains these trials exactly: {no_retrain}.", ""]
    elif best:
        lines += ["Retrain the best trial through the pipeline (checkpoint, test metrics, ONNX files, "
                  "`dvc exp show`):", "", "```", shell(exp_command(study, best[0])), "```", ""]
    write_text(folder / "summary.md", "\n".join(lines))
    write_text(folder / "trials.csv", trials_csv(study))
    return skipped


def queue_best(study: optuna.Study, count: int, cwd: Path | None = None) -> list[str]:
    """Queue the best `count` finished trials as DVC experiments (`dvc queue start` runs them)."""
    queued = []
    for trial in finished(study)[:count]:
        command = exp_command(study, trial, queue=True)
        # The dvc and python3 of this environment, also when fmnist-tune is called as .venv/bin/fmnist-tune
        # from a shell without the venv: the queue's worker runs the stages' `python3` from PATH.
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise StudyError(f"`{shell(command)}` failed: {detail[-1] if detail else result.returncode}")
        queued.append(experiment_name(study.study_name, trial))
    return queued
