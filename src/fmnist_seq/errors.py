"""Errors the pipeline raises where the cause is known; stage scripts turn them into one line."""


class PipelineError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class ParamsError(PipelineError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


class DataError(PipelineError):
    """Input data is missing, corrupt or not what the stage expects."""


class TrainingError(PipelineError):
    """Training cannot go on (for example the loss became non-finite)."""


class CheckpointError(PipelineError):
    """A checkpoint file is missing, truncated or does not match its parameters."""


class ExportError(PipelineError):
    """The exported model does not match PyTorch or could not be written."""


class InferenceError(PipelineError):
    """An ONNX model cannot be loaded or run (missing or broken file, an execution provider that did not start)."""


class CalibrationError(PipelineError):
    """No trustworthy temperature can be fitted for a model (non-finite logits, one class, a temperature out of
    range), or the fitted temperatures are missing."""


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped a stage; `signal_name` says which. A KeyboardInterrupt, so that no
    `except Exception` on the way swallows it."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name
